"""Ensemble: weights, normalisation (none / running zscore / minmax), raw signals, names, concurrency."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from engine.rewards.base import RewardBackend, RewardResult
from engine.rewards.ensemble import Ensemble, RunningStats


class LengthReward:
    """Test backend: reward = a * len(response) + b; raw signal "chars" = len(response)."""

    def __init__(self, name: str, a: float = 1.0, b: float = 0.0, delay_s: float = 0.0,
                 score_range: tuple[float, float] | None = None) -> None:
        self.name, self.a, self.b, self.delay_s = name, a, b, delay_s
        if score_range is not None:
            self.score_range = score_range
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        time.sleep(self.delay_s)
        chars = [float(len(r)) for r in responses]
        return RewardResult([self.a * c + self.b for c in chars], {"chars": chars})


class NamespacedReward:
    """Test backend whose raw keys are already namespaced like a judge's ("<name>/score")."""

    name = "judge"
    score_range = (-5.0, 5.0)

    def __init__(self, values):
        self.values = values

    def score(self, prompts, responses):
        vals = [float(v) for v in self.values[: len(responses)]]
        return RewardResult(vals, {"judge/score": vals, "judge/parse_ok": [1.0] * len(vals)})


P = ["p1", "p2", "p3"]
R = ["a", "bbbb", "cc"]


def test_single_member_weight_one_none_is_exactly_the_member():
    member = LengthReward("len", a=0.1, b=1e-17)  # values with awkward binary expansions
    ens = Ensemble([(member, 1.0)])
    assert isinstance(ens, RewardBackend)
    got = ens.score(P, R)
    want = member.score(P, R)
    assert got.scores == want.scores
    assert all(math.copysign(1, g) == math.copysign(1, w) for g, w in zip(got.scores, want.scores, strict=True))
    assert got.raw == {"len": want.scores, "len/chars": [1.0, 4.0, 2.0]}


def test_weighted_sum_and_raw_signals():
    a, b = LengthReward("a"), LengthReward("b", a=-1.0, b=10.0)
    ens = Ensemble([(a, 0.5), (b, 2.0)])
    result = ens.score(P, R)
    assert result.scores == [0.5 * 1 + 2.0 * 9, 0.5 * 4 + 2.0 * 6, 0.5 * 2 + 2.0 * 8]
    assert result.raw == {"a": [1.0, 4.0, 2.0], "a/chars": [1.0, 4.0, 2.0],
                          "b": [9.0, 6.0, 8.0], "b/chars": [1.0, 4.0, 2.0]}


def test_judge_style_raw_keys_are_kept_and_member_score_added():
    ens = Ensemble([(NamespacedReward([5, -4, 0]), 1.0), (LengthReward("len"), 0.0)])
    result = ens.score(P, R)
    assert result.scores == [5.0, -4.0, 0.0]
    assert set(result.raw) == {"judge", "judge/score", "judge/parse_ok", "len", "len/chars"}
    assert result.raw["judge"] == [5.0, -4.0, 0.0]


def test_zscore_uses_running_statistics():
    member = LengthReward("len")
    ens = Ensemble([(member, 1.0)], normalize="zscore")
    batches = [["a", "bbb", "cc"], ["dddddd", "e"], ["ffff", "gg", "hhhhhhhh", "i"]]
    seen: list[float] = []
    for batch in batches:
        result = ens.score(["p"] * len(batch), batch)
        seen += [float(len(r)) for r in batch]
        mean, std = np.mean(seen), np.std(seen)  # stats include this batch, then are applied to it
        assert result.scores == pytest.approx([(len(r) - mean) / std for r in batch])
        assert result.raw["len"] == [float(len(r)) for r in batch]  # unnormalised
        assert result.raw["len/normalized"] == result.scores
    assert ens.stats["len"].count == 9


def test_zscore_constant_first_batch_does_not_divide_by_zero():
    ens = Ensemble([(LengthReward("len"), 1.0)], normalize="zscore")
    first = ens.score(["p"] * 3, ["aa", "bb", "cc"])
    assert first.scores == [0.0, 0.0, 0.0]
    single = Ensemble([(LengthReward("one"), 1.0)], normalize="zscore").score(["p"], ["x"])
    assert single.scores == [0.0]
    second = ens.score(["p"] * 2, ["aaaa", "aa"])  # history [2, 2, 2, 4, 2]
    mean, std = np.mean([2, 2, 2, 4, 2]), np.std([2, 2, 2, 4, 2])
    assert second.scores == pytest.approx([(4 - mean) / std, (2 - mean) / std])
    assert all(math.isfinite(s) for s in first.scores + second.scores)


def test_running_stats_matches_numpy_on_many_batches():
    rng = np.random.default_rng(0)
    stats, seen = RunningStats(), []
    for _ in range(50):
        batch = list(rng.normal(1e6, 3.0, size=int(rng.integers(0, 20))))  # large offset: Welford stays exact
        stats.update(batch)
        seen += batch
    assert stats.count == len(seen)
    assert stats.mean == pytest.approx(np.mean(seen), rel=1e-12)
    assert stats.std == pytest.approx(np.std(seen), rel=1e-9)


def test_minmax_uses_declared_ranges():
    judge = NamespacedReward([5, -5, 0])
    length = LengthReward("len", score_range=(0.0, 8.0))
    ens = Ensemble([(judge, 1.0), (length, 2.0)], normalize="minmax")
    result = ens.score(P, R)
    assert result.raw["judge/normalized"] == [1.0, 0.0, 0.5]
    assert result.raw["len/normalized"] == [1 / 8, 4 / 8, 2 / 8]
    assert result.scores == pytest.approx([1.0 + 2 / 8, 0.0 + 8 / 8, 0.5 + 4 / 8])


def test_minmax_without_a_range_names_the_member():
    with pytest.raises(ValueError, match=r"member 'len' \(LengthReward\) has none"):
        Ensemble([(NamespacedReward([1]), 1.0), (LengthReward("len"), 1.0)], normalize="minmax")
    with pytest.raises(ValueError, match="member 'bad'"):
        Ensemble([(LengthReward("bad", score_range=(3.0, 3.0)), 1.0)], normalize="minmax")
    Ensemble([(LengthReward("len"), 1.0)], normalize="zscore")  # zscore and none need no range


def test_minmax_with_a_real_judge_range(monkeypatch):
    for var, value in (("AWS_ACCESS_KEY_ID", "AKIADUMMY"), ("AWS_SECRET_ACCESS_KEY", "dummy"),
                       ("AWS_EC2_METADATA_DISABLED", "true")):
        monkeypatch.setenv(var, value)
    from engine.rewards.bedrock_judge import BedrockJudge

    judge = BedrockJudge(rubric="summary_quality", endpoint_url="http://127.0.0.1:9", name="sq")
    ens = Ensemble([(judge, 1.0)], normalize="minmax")
    assert ens.ranges == {"sq": (1.0, 5.0)}


@pytest.mark.parametrize("members, normalize, message", [
    ([(LengthReward("x"), 1.0), (LengthReward("x"), 2.0)], "none", "used more than once: x"),
    ([(LengthReward("a/b"), 1.0)], "none", "must not contain '/'"),
    ([], "none", "at least one"),
    ([(LengthReward("a"), float("nan"))], "none", "weight of member 'a' must be a finite number"),
    ([(LengthReward("a"), 0.0)], "none", "non-zero weight"),
    ([(object(), 1.0)], "none", "has no score"),
    ([LengthReward("a")], "none", r"members\[0\] must be a \(backend, weight\) pair"),
    ([(LengthReward("a"), 1.0)], "rank", "normalize must be one of none, zscore, minmax"),
])
def test_construction_errors(members, normalize, message):
    with pytest.raises(ValueError, match=message):
        Ensemble(members, normalize=normalize)


def test_member_with_wrong_length_is_an_error():
    class Short(LengthReward):
        def score(self, prompts, responses):
            return RewardResult([1.0], {})

    with pytest.raises(ValueError, match="member 'short' returned 1 scores for 3 items"):
        Ensemble([(Short("short"), 1.0)]).score(P, R)


def test_members_run_concurrently_and_errors_propagate():
    import threading

    # Each member waits until all three are inside score(): run one after another, the first would wait alone
    # until the barrier's timeout and break it (no wall-clock threshold, so a loaded machine cannot fail it).
    barrier = threading.Barrier(3, timeout=60)

    class Meeting(LengthReward):
        def score(self, prompts, responses):
            barrier.wait()
            return super().score(prompts, responses)

    members = [(Meeting(f"m{i}"), 1.0) for i in range(3)]
    Ensemble(members).score(P, R)
    assert all(m.calls == 1 for m, _ in members) and not barrier.broken

    class Broken(LengthReward):
        def score(self, prompts, responses):
            raise RuntimeError("reward model crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        Ensemble([(LengthReward("ok"), 1.0), (Broken("broken"), 1.0)]).score(P, R)


def test_metrics_gather_member_metrics():
    class WithMetrics(LengthReward):
        def metrics(self):
            return {f"judge/{self.name}/calls": float(self.calls)}

    ens = Ensemble([(WithMetrics("w"), 1.0), (LengthReward("plain"), 1.0)])
    ens.score(P, R)
    assert ens.metrics() == {"judge/w/calls": 1.0}
