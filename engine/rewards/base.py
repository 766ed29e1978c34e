"""The one interface every reward backend implements.

A backend takes a batch of (prompt, response) pairs and returns one float per item (the reward PPO
uses) plus named raw signals (for the store and the UI). Backends score the response alone unless
their config says `score_on: prompt_response` (trap 2 of the seed: the fixed dialogue must not
dominate the score).

Classifier backends that estimate a probability of toxicity also implement `toxicity(texts)`, so
the same object can serve as the evaluator of before/after toxicity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class RewardResult:
    """Scores of one batch: `scores[i]` is the reward of item i; `raw[name][i]` its raw signals.

    `valid[i]` is False when item i's score is a stand-in (a judge that gave no parsed score: see
    `Judge.on_unparsed`); statistics such as the ensemble's running z-score skip those. None: all valid."""

    scores: list[float]
    raw: dict[str, list[float]] = field(default_factory=dict)
    valid: list[bool] | None = None

    def __post_init__(self) -> None:
        if self.valid is not None and len(self.valid) != len(self.scores):
            raise ValueError(f"valid has {len(self.valid)} flags for {len(self.scores)} scores")
        for name, values in self.raw.items():
            if len(values) != len(self.scores):
                raise ValueError(
                    f"raw signal {name!r} has {len(values)} values for {len(self.scores)} scores"
                )


@runtime_checkable
class RewardBackend(Protocol):
    """A reward function: `score(prompts, responses)` gives one float per pair."""

    name: str

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult: ...


@runtime_checkable
class ToxicityScorer(Protocol):
    """Anything that gives a probability of toxicity in [0, 1] per text (used by evaluation)."""

    name: str

    def toxicity(self, texts: Sequence[str]) -> list[float]: ...


def texts_to_score(prompts: Sequence[str], responses: Sequence[str], score_on: str) -> list[str]:
    """The texts a classifier sees: the response alone, or prompt + response when asked."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if score_on == "response":
        return list(responses)
    if score_on == "prompt_response":
        return [p + r for p, r in zip(prompts, responses, strict=True)]
    raise ValueError(f"score_on must be 'response' or 'prompt_response', got {score_on!r}")


def check_finite_cap(cap, backend: str) -> None:
    """A backend's optional `cap`: None or a finite number (not a bool), else ValueError naming the backend."""
    import math

    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap)):
        raise ValueError(f"{backend} cap must be a finite number, got {cap!r}")
