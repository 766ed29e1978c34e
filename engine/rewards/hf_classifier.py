"""Reward from any Hugging Face sequence classifier (hub id or local folder), with the label picked by name.

Responsible for: loading an `AutoModelForSequenceClassification` and its tokenizer lazily, resolving the
reward label and the toxic label through the model's `config.id2label` (by name, case-insensitive, or by
index), and scoring texts in batches: reward = the logit of the reward label; raw signals = every label's
logit and softmax probability; `toxicity` = the softmax probability of the toxic label.

Not responsible for: downloading policy (from_pretrained does that, or reads a local folder), or training.

Seed trap 1: the seed called a `pipeline(top_k=None)` and took `result[0]["score"]`; those results are sorted
by score, so the "reward" was whichever logit was largest — hateful text was rewarded with its hate logit.
Here the column is fixed once, by label name, and never depends on the scores.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from engine.rewards.base import RewardResult, texts_to_score
from engine.rewards.profanity import check_texts

# The seed's classifier: id2label {0: "nothate", 1: "hate"}; its reward is the "nothate" logit.
SEED_MODEL = "facebook/roberta-hate-speech-dynabench-r4-target"


def resolve_label(spec: str | int, id2label: dict[int, str], arg: str = "label") -> int:
    """The index of a label given by name (case-insensitive, via id2label) or by index (range-checked)."""
    num_labels = len(id2label)
    names = ", ".join(f"{i}={id2label[i]!r}" for i in sorted(id2label))
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise ValueError(f"{arg} must be a label name or index, got {spec!r}")
    if isinstance(spec, int):
        if not 0 <= spec < num_labels:
            raise ValueError(f"{arg} index {spec} out of range: the model has {num_labels} labels ({names})")
        return spec
    matches = [i for i, name in id2label.items() if str(name).lower() == spec.lower()]
    if len(matches) != 1:
        problem = "is not a label" if not matches else "matches several labels"
        raise ValueError(f"{arg} {spec!r} {problem} of this model; its labels are {names}")
    return matches[0]


class HFClassifierBackend:
    """Reward = the logit of `label` of a Hugging Face sequence classifier.

    `label` / `toxic_label`: a name from the model's id2label (case-insensitive) or an index. `toxic_label`
    defaults, for a two-label model, to the label that is not `label`; a model with more labels needs it
    set for `toxicity`. Texts are truncated to `max_length` tokens and scored `batch_size` at a time.
    """

    def __init__(
        self,
        model: str,
        label: str | int = 0,
        name: str | None = None,
        score_on: str = "response",
        batch_size: int = 32,
        max_length: int = 512,
        device: str = "cpu",
        toxic_label: str | int | None = None,
    ) -> None:
        texts_to_score([], [], score_on)  # validates score_on early
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a hub id or a local folder, got {model!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.model_name = model
        self.label = label
        self.name = name or model
        self.score_on = score_on
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.toxic_label = toxic_label
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self.label_index: int | None = None  # set by load()
        self.toxic_index: int | None = None  # set by load(); None if it cannot be inferred
        self.labels: list[str] = []  # names by index, set by load()

    def load(self) -> HFClassifierBackend:
        """Load tokenizer and model (once) and resolve the labels; raises ValueError for a bad label."""
        with self._lock:
            if self._model is not None:
                return self
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_name)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_name)
            id2label = {int(i): str(n) for i, n in model.config.id2label.items()}
            if sorted(id2label) != list(range(model.config.num_labels)):
                raise ValueError(f"{self.model_name}: config.id2label {id2label} does not cover its num_labels")
            label_index = resolve_label(self.label, id2label, "label")
            if self.toxic_label is not None:
                toxic_index: int | None = resolve_label(self.toxic_label, id2label, "toxic_label")
            else:
                toxic_index = 1 - label_index if len(id2label) == 2 else None
            if tokenizer.pad_token is None:  # e.g. GPT-2-style classifiers: pad with EOS, as they were trained
                tokenizer.pad_token = tokenizer.eos_token
                model.config.pad_token_id = tokenizer.eos_token_id
            self.labels = [id2label[i] for i in range(len(id2label))]
            self.label_index, self.toxic_index = label_index, toxic_index
            self._tokenizer = tokenizer
            self._model = model.to(self.device).eval()
        return self

    def logits(self, texts: Sequence[str]) -> Any:
        """Logits, a float32 CPU tensor of shape (len(texts), num_labels)."""
        import torch

        texts = check_texts(texts)
        self.load()
        max_length = self.max_length
        limit = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(limit, int) and limit < 1_000_000:  # tokenizers without a limit report ~1e30
            max_length = min(max_length, limit)
        out = torch.zeros(len(texts), len(self.labels))
        # Batches of similar length waste less compute on padding; results go back to input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                out[idx] = self._model(**enc).logits.float().cpu()
        return out

    def toxicity(self, texts: Sequence[str]) -> list[float]:
        """Softmax probability of the toxic label per text (the ToxicityScorer interface)."""
        self.load()
        if self.toxic_index is None:
            raise ValueError(
                f"toxic_label must be set for {self.model_name}, which has {len(self.labels)} labels ({self.labels})"
            )
        return self.logits(texts).softmax(dim=-1)[:, self.toxic_index].tolist()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Reward of each (prompt, response): the logit of `label` for the text given by `score_on`."""
        texts = texts_to_score(check_texts(prompts, "prompts"), check_texts(responses, "responses"), self.score_on)
        logits = self.logits(texts)
        probs = logits.softmax(dim=-1)
        raw: dict[str, list[float]] = {}
        for j, label in enumerate(self.labels):
            raw[f"logit_{label}"] = logits[:, j].tolist()
        for j, label in enumerate(self.labels):
            raw[f"p_{label}"] = probs[:, j].tolist()
        return RewardResult(scores=logits[:, self.label_index].tolist(), raw=raw)
