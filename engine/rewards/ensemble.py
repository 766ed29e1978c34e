"""A weighted mix of reward backends: the run's reward (a single backend is a one-member ensemble).

Responsible for: scoring the batch with every member (concurrently, one thread per member), putting
each member's scores on a comparable scale (`normalize`), the weighted sum, and keeping every
member's signals in `raw` so the UI can draw one curve per signal:
- "<member>": the member's unnormalised score;
- "<member>/<signal>": each raw signal of the member (kept as is when already namespaced by the member);
- "<member>/normalized": the score after normalisation (only when normalize is not "none").

normalize:
- "none": scores as they are. One member with weight 1 gives exactly that member's scores.
- "zscore": (x - mean) / std with running statistics per member (Welford/Chan), updated with each
  batch and then applied to it; while the std is still 0 (a constant history) only the mean is removed.
  Only valid scores update the statistics (`RewardResult.valid`: a judge's stand-in for a refusal or a
  failed call is normalised, never learnt from).
- "minmax": (x - low) / (high - low) with the member's declared `score_range` (judges: the rubric's).

Not responsible for: building members from config (`engine.rewards.build_reward`) or what each
member computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.rewards.base import RewardBackend, RewardResult

NORMALIZE = ("none", "zscore", "minmax")
_STD_EPS = 1e-8


class RunningStats:
    """Running mean and population variance of a stream of numbers, updated a batch at a time."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    def update(self, values: Sequence[float]) -> None:
        """Merge a batch (Chan et al.'s parallel form of Welford's update: stable for large counts)."""
        n = len(values)
        if n == 0:
            return
        b_mean = sum(values) / n
        self.merge(n, b_mean, sum((v - b_mean) ** 2 for v in values))

    def update_across(self, values: Sequence[float], group) -> None:
        """`update` with the batch of every process of `group` (engine.distributed): its count, sum and squared
        deviations are summed across ranks, so every rank holds the statistics of the whole batch."""
        n, total = group.sum_floats([float(len(values)), float(sum(values))])
        if n == 0:
            return
        b_mean = total / n
        self.merge(int(n), b_mean, group.sum_floats([sum((v - b_mean) ** 2 for v in values)])[0])

    def merge(self, n: int, b_mean: float, b_m2: float) -> None:
        """Merge a batch given by its count, mean and sum of squared deviations."""
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def apply(self, values: Sequence[float]) -> list[float]:
        """(v - mean) / std; the std is taken as 1 while it is 0, so a constant batch maps to 0."""
        std = self.std
        scale = std if std > _STD_EPS else 1.0
        return [(v - self.mean) / scale for v in values]


def _declared_range(backend: Any) -> tuple[float, float] | None:
    rng = getattr(backend, "score_range", None)
    if rng is None:
        return None
    try:
        low, high = (float(x) for x in rng)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        return None
    return low, high


class Ensemble:
    """Weighted sum of member rewards, each normalised first (see the module docstring)."""

    def __init__(self, members: Sequence[tuple[RewardBackend, float]], normalize: str = "none",
                 name: str = "ensemble", concurrent: bool = True) -> None:
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        self.name = name
        members = list(members)
        if not members:
            raise ValueError("members: an ensemble needs at least one (backend, weight) pair")
        names: list[str] = []
        weights: list[float] = []
        for i, item in enumerate(members):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"members[{i}] must be a (backend, weight) pair, got {item!r}")
            backend, weight = item
            if not callable(getattr(backend, "score", None)):
                raise ValueError(f"members[{i}] ({type(backend).__name__}) has no score(prompts, responses) method")
            member = getattr(backend, "name", None)
            if not isinstance(member, str) or not member:
                raise ValueError(f"members[{i}] ({type(backend).__name__}) needs a non-empty string `name`")
            if "/" in member:  # "/" namespaces the raw signals of a member; a name with one could collide
                raise ValueError(f"member name {member!r} must not contain '/'")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"weight of member {member!r} must be a finite number, got {weight!r}")
            names.append(member)
            weights.append(float(weight))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"member names must be unique; used more than once: {', '.join(duplicates)} "
                             "(give each backend its own name)")
        if all(w == 0 for w in weights):
            raise ValueError("weights: at least one member needs a non-zero weight")
        self.ranges: dict[str, tuple[float, float]] = {}
        if normalize == "minmax":
            for (backend, _), member in zip(members, names, strict=True):
                rng = _declared_range(backend)
                if rng is None:
                    raise ValueError(f"normalize='minmax' needs a score_range (low < high) on every member; member "
                                     f"{member!r} ({type(backend).__name__}) has none: use 'zscore' or 'none'")
                self.ranges[member] = rng
        self.members = [m for m, _ in members]
        self.names = names
        self.weights = weights
        self.normalize = normalize
        self.stats = {n: RunningStats() for n in names}
        # Data parallel (engine.distributed.Group): z-score statistics learn from every rank's batch, so all ranks
        # normalise alike and as one process on the whole batch would. None: this process's batches only.
        self.group = None
        self._pool = ThreadPoolExecutor(len(members), thread_name_prefix="ensemble") \
            if concurrent and len(members) > 1 else None

    def _score_members(self, prompts: Sequence[str], responses: Sequence[str]) -> list[RewardResult]:
        if self._pool is None:
            return [m.score(prompts, responses) for m in self.members]
        futures = [self._pool.submit(m.score, prompts, responses) for m in self.members]
        return [f.result() for f in futures]  # a member's exception propagates: a broken reward must stop the run

    def normalise(self, name: str, values: list[float], valid: list[bool] | None = None) -> list[float]:
        """Member `name`'s scores on the ensemble's scale; z-score statistics learn from the valid ones only."""
        if self.normalize == "zscore":
            stats = self.stats[name]
            learnt = values if valid is None else [v for v, ok in zip(values, valid, strict=True) if ok]
            if self.group is not None and self.group.distributed:
                stats.update_across(learnt, self.group)
            else:
                stats.update(learnt)
            return stats.apply(values)
        if self.normalize == "minmax":
            low, high = self.ranges[name]
            return [(v - low) / (high - low) for v in values]
        return values

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Weighted sum of the members' (normalised) scores, with every member's signals in raw."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        n = len(prompts)
        total: list[float] | None = None
        raw: dict[str, list[float]] = {}
        for name, weight, result in zip(self.names, self.weights, self._score_members(prompts, responses),
                                        strict=True):
            values = [float(s) for s in result.scores]
            if len(values) != n:
                raise ValueError(f"member {name!r} returned {len(values)} scores for {n} items")
            normed = self.normalise(name, values, result.valid)
            weighted = [weight * v for v in normed]
            # The first member's weighted scores are taken as they are (not added to 0.0), keeping
            # a one-member, weight-1, "none" ensemble bit-identical to its member.
            total = weighted if total is None else [t + w for t, w in zip(total, weighted, strict=True)]
            signals = {name: values}
            for key, vals in result.raw.items():
                signals[key if key.startswith(name + "/") else f"{name}/{key}"] = [float(v) for v in vals]
            if self.normalize != "none":
                signals[f"{name}/normalized"] = normed
            for key, vals in signals.items():
                if key in raw:
                    raise ValueError(f"raw signal {key!r} of member {name!r} clashes with another signal")
                raw[key] = vals
        return RewardResult(scores=total or [], raw=raw)

    def metrics(self) -> dict[str, float]:
        """Every member's own metrics (judges: judge/<name>/calls, ..._latency_s, cost_usd)."""
        out: dict[str, float] = {}
        for m in self.members:
            fn = getattr(m, "metrics", None)
            if callable(fn):
                out.update(fn())
        return out

    def close(self) -> None:
        """Stop the member threads and close members that can be closed."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for m in self.members:
            fn = getattr(m, "close", None)
            if callable(fn):
                fn()

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}×{w:g}" for n, w in zip(self.names, self.weights, strict=True))
        return f"Ensemble({parts}, normalize={self.normalize!r})"
