"""Reward from the Jigsaw toxic-comment BiLSTM of PyPI `toxic-comment-classifier` 0.3.0, run in PyTorch.

Responsible for: reading the package's Keras weights (`model/model.weights.h5`, with h5py) and word index
(`model/tokenizer.pickle`, a pickled Keras `Tokenizer`, loaded without Keras), re-implementing its text
preprocessing exactly, and running the same forward pass in PyTorch; then turning the six label
probabilities into a reward (log-odds of "not <label>") and a toxicity probability (P(toxic)).

Not responsible for: training, or importing the package itself — its `__init__` imports TensorFlow, so
the package is installed with `--no-deps` and only its data files are read. Parity with the Keras
model is checked by tests/test_rewards_jigsaw.py against tests/data/jigsaw_expected.json.

The Keras model (from the package's model.py):
    ids (100,) -> Embedding(20000, 50) -> Bidirectional(LSTM(50, return_sequences=True))
    -> GlobalMaxPooling1D -> Dense(50, relu) -> Dropout -> Dense(6, sigmoid)
No masking: the zero padding goes through the LSTM like any token, as in Keras.

Its scores run high on short "you" sentences ("I like you." ≈ 0.36): rank texts, don't threshold them.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.rewards.base import RewardResult, texts_to_score
from engine.rewards.profanity import EPS, check_texts

LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100  # the package pads / truncates every text to 100 word ids
PACKAGE = "toxic_classifier"  # the import name of PyPI toxic-comment-classifier
# log-odds are clipped like the profanity backend's: p within [EPS, 1 - EPS].
MAX_LOG_ODDS = math.log((1.0 - EPS) / EPS)


def package_model_dir() -> Path:
    """The `model/` folder of the installed package, found without importing it (that would import TF)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the jigsaw reward needs PyPI toxic-comment-classifier==0.3.0; "
            "install it with `pip install --no-deps toxic-comment-classifier==0.3.0`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


# ------------------------------------------------------------------------------------------------ tokenizer


class _PickledKerasTokenizer:
    """Stands in for keras' Tokenizer class while unpickling: only its attributes are kept."""


class _TokenizerUnpickler(pickle.Unpickler):
    """Unpickles the Keras Tokenizer without Keras, and refuses any other class (no code runs)."""

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("builtins", "int"),
    }
    TOKENIZER_MODULES = ("keras.src.legacy.preprocessing.text", "keras.preprocessing.text", "keras_preprocessing.text")

    def find_class(self, module: str, name: str) -> Any:
        if name == "Tokenizer" and module in self.TOKENIZER_MODULES:
            return _PickledKerasTokenizer
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"tokenizer pickle refers to {module}.{name}, which is not allowed")


@dataclass
class KerasWordTokenizer:
    """Keras' legacy `Tokenizer.texts_to_sequences` + `pad_sequences`, re-implemented exactly (word level)."""

    word_index: dict[str, int]
    num_words: int | None
    filters: str
    lower: bool
    split: str
    oov_token: str | None

    @classmethod
    def from_pickle(cls, path: str | Path) -> KerasWordTokenizer:
        """Load a pickled Keras Tokenizer (word level, no custom analyzer) without importing Keras."""
        with open(path, "rb") as f:
            obj = _TokenizerUnpickler(f).load()
        state = obj.__dict__
        if state.get("char_level") or state.get("analyzer") is not None:
            raise ValueError(f"{path}: only word-level Keras tokenizers without an analyzer are supported")
        num_words = state.get("num_words")
        oov = state.get("oov_token")
        # Words at or past num_words are dropped at lookup time, so they need not be kept in memory.
        word_index = {w: i for w, i in state["word_index"].items() if not num_words or i < num_words or w == oov}
        return cls(word_index, num_words, state["filters"], bool(state["lower"]), state["split"], oov)

    def words(self, text: str) -> list[str]:
        """keras `text_to_word_sequence`: lower, filter characters to the split char, split, drop empties."""
        if self.lower:
            text = text.lower()
        text = text.translate(str.maketrans({c: self.split for c in self.filters}))
        return [w for w in text.split(self.split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        """Word ids per text; unknown words (and words past num_words) dropped unless there is an OOV token."""
        oov_index = self.word_index.get(self.oov_token) if self.oov_token is not None else None
        sequences = []
        for text in texts:
            seq = []
            for w in self.words(text):
                i = self.word_index.get(w)
                if i is not None and not (self.num_words and i >= self.num_words):
                    seq.append(i)
                elif oov_index is not None:
                    seq.append(oov_index)
            sequences.append(seq)
        return sequences

    @staticmethod
    def pad_sequences(sequences: Sequence[Sequence[int]], maxlen: int = MAXLEN) -> np.ndarray:
        """keras `pad_sequences` defaults: zeros in front, long sequences keep their last `maxlen` ids."""
        out = np.zeros((len(sequences), maxlen), dtype=np.int64)
        for row, seq in enumerate(sequences):
            if seq:
                tail = list(seq)[-maxlen:]
                out[row, -len(tail) :] = tail
        return out


# ------------------------------------------------------------------------------------------------ network


def read_keras_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The model's arrays from a Keras 3 `.weights.h5` file, by role, with their shapes checked."""
    import h5py

    layout = {
        "embedding": ("layers/embedding/vars/0", (20000, 50)),
        "fw_kernel": ("layers/bidirectional/forward_layer/cell/vars/0", (50, 200)),
        "fw_recurrent": ("layers/bidirectional/forward_layer/cell/vars/1", (50, 200)),
        "fw_bias": ("layers/bidirectional/forward_layer/cell/vars/2", (200,)),
        "bw_kernel": ("layers/bidirectional/backward_layer/cell/vars/0", (50, 200)),
        "bw_recurrent": ("layers/bidirectional/backward_layer/cell/vars/1", (50, 200)),
        "bw_bias": ("layers/bidirectional/backward_layer/cell/vars/2", (200,)),
        "dense_kernel": ("layers/dense/vars/0", (100, 50)),
        "dense_bias": ("layers/dense/vars/1", (50,)),
        "out_kernel": ("layers/dense_1/vars/0", (50, len(LABELS))),
        "out_bias": ("layers/dense_1/vars/1", (len(LABELS),)),
    }
    weights = {}
    with h5py.File(path, "r") as f:
        for role, (key, shape) in layout.items():
            if key not in f:
                raise ValueError(f"{path}: missing dataset {key!r} ({role})")
            array = np.asarray(f[key], dtype=np.float32)
            if array.shape != shape:
                raise ValueError(f"{path}: {key!r} has shape {array.shape}, expected {shape}")
            weights[role] = array
    return weights


def build_bilstm(weights: dict[str, np.ndarray], device: str = "cpu") -> Any:
    """The Keras network as torch modules (a ModuleDict: embedding, lstm, dense, out), in eval mode."""
    import torch
    from torch import nn

    net = nn.ModuleDict(
        {
            "embedding": nn.Embedding(*weights["embedding"].shape),
            "lstm": nn.LSTM(50, 50, batch_first=True, bidirectional=True),
            "dense": nn.Linear(100, 50),
            "out": nn.Linear(50, len(LABELS)),
        }
    )
    t = torch.from_numpy
    with torch.no_grad():
        net["embedding"].weight.copy_(t(weights["embedding"]))
        # Keras LSTM: kernel (in, 4h) and recurrent_kernel (h, 4h), gates in order i, f, c, o — the same order
        # as torch's i, f, g, o — so a transpose suffices. Keras has one bias; torch adds b_ih + b_hh.
        for prefix, suffix in (("fw", ""), ("bw", "_reverse")):
            lstm = net["lstm"]
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(t(weights[f"{prefix}_kernel"]).T)
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(t(weights[f"{prefix}_recurrent"]).T)
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(t(weights[f"{prefix}_bias"]))
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()
        net["dense"].weight.copy_(t(weights["dense_kernel"]).T)  # Keras Dense kernel is (in, out)
        net["dense"].bias.copy_(t(weights["dense_bias"]))
        net["out"].weight.copy_(t(weights["out_kernel"]).T)
        net["out"].bias.copy_(t(weights["out_bias"]))
    return net.to(device).eval()


def bilstm_logits(net: Any, ids: Any) -> Any:
    """Pre-sigmoid outputs (batch, 6) for padded word ids (batch, 100)."""
    import torch

    h, _ = net["lstm"](net["embedding"](ids))  # (batch, time, 2*50): [forward, backward] per time step
    pooled = h.max(dim=1).values  # GlobalMaxPooling1D over time (padding included, as in Keras)
    return net["out"](torch.relu(net["dense"](pooled)))  # Dropout is the identity at inference


@functools.lru_cache(maxsize=4)
def _load(model_dir: str, device: str) -> tuple[KerasWordTokenizer, Any]:
    """Tokenizer and network, loaded once per (folder, device) and shared by every backend instance."""
    folder = Path(model_dir)
    tokenizer = KerasWordTokenizer.from_pickle(folder / "tokenizer.pickle")
    net = build_bilstm(read_keras_weights(folder / "model.weights.h5"), device)
    return tokenizer, net


# ------------------------------------------------------------------------------------------------ backend


class JigsawBackend:
    """Reward = log-odds that the text is not `label`, by the Jigsaw BiLSTM (six labels, see LABELS).

    raw signals: `p_<label>` for all six labels. `toxicity(texts)` gives P(toxic).
    `model_dir` defaults to the installed package's `model/` folder.
    """

    def __init__(
        self,
        name: str = "jigsaw",
        score_on: str = "response",
        label: str = "toxic",
        device: str = "cpu",
        batch_size: int = 256,
        model_dir: str | None = None,
    ) -> None:
        texts_to_score([], [], score_on)  # validates score_on early
        if label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)}; got {label!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.score_on = score_on
        self.label = label
        self.device = device
        self.batch_size = batch_size
        self.model_dir = model_dir

    def _model(self) -> tuple[KerasWordTokenizer, Any]:
        return _load(str(self.model_dir or package_model_dir()), self.device)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Pre-sigmoid outputs, shape (len(texts), 6), columns in LABELS order."""
        import torch

        texts = check_texts(texts)
        tokenizer, net = self._model()
        out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                ids = tokenizer.pad_sequences(tokenizer.texts_to_sequences(chunk), MAXLEN)
                logits = bilstm_logits(net, torch.from_numpy(ids).to(self.device))
                out[start : start + len(chunk)] = logits.float().cpu().numpy()
        return out

    def probabilities(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """P(label) per text for each of the six labels."""
        probs = 1.0 / (1.0 + np.exp(-self.logits(texts).astype(np.float64)))
        return {label: probs[:, j].tolist() for j, label in enumerate(LABELS)}

    def toxicity(self, texts: Sequence[str]) -> list[float]:
        """P(toxic) per text (the ToxicityScorer interface), whatever `label` the reward uses."""
        return self.probabilities(texts)["toxic"]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Reward of each (prompt, response): log-odds of "not <label>" for the text given by `score_on`."""
        texts = texts_to_score(check_texts(prompts, "prompts"), check_texts(responses, "responses"), self.score_on)
        logits = self.logits(texts).astype(np.float64)
        # log(1 - p) - log(p) with p = sigmoid(z) is exactly -z; clip like the profanity backend.
        rewards = np.clip(-logits[:, LABELS.index(self.label)], -MAX_LOG_ODDS, MAX_LOG_ODDS)
        probs = 1.0 / (1.0 + np.exp(-logits))
        raw = {f"p_{label}": probs[:, j].tolist() for j, label in enumerate(LABELS)}
        return RewardResult(scores=rewards.tolist(), raw=raw)
