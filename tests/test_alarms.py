"""engine/alarms.py detector by detector on hand-built steps, the alarms config's validation, and the store table."""

from __future__ import annotations

import math

import pytest

from engine.alarms import (
    ALARM_NAMES,
    Degeneration,
    EnsembleDisagreement,
    EntropyCollapse,
    JudgeFailures,
    KLRunaway,
    LengthDrift,
    Monitor,
    NotLanguage,
    RewardVsProbe,
    StepView,
    distinct_n,
    pearson,
    repeat_share,
)
from engine.config import AlarmSettings, RunConfig, validate


def view(step, lengths=(10, 10, 10, 10), tokens=None, **kw):
    tokens = tokens or [list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)]
    return StepView(step=step, metrics=kw.pop("metrics", {}), responses=["x"] * len(tokens), token_ids=tokens,
                    max_new_tokens=kw.pop("max_new_tokens", 24), min_length=kw.pop("min_length", 2), **kw)


def feed(detector, views):
    """Observe every view; the firings in order."""
    return [f for v in views for f in [detector.observe(v)[1]] if f is not None]


def test_helpers():
    assert repeat_share([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert repeat_share([1, 2, 3], 2) == 0 and math.isnan(repeat_share([1], 2))
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(0.5)
    assert pearson([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_length_drift_fires_after_patience_with_since_and_longest_evidence():
    cfg = AlarmSettings()
    d = LengthDrift(cfg)
    views = [view(s, (10, 10, 10, 10)) for s in (1, 2, 3)]
    views += [view(4, (12, 10, 11, 10)), view(5, (16, 18, 12, 20)), view(6, (16, 19, 12, 20))]
    fired = feed(d, views)
    assert len(fired) == 1
    f = fired[0]
    assert (f.name, f.step, f.since_step, f.threshold) == ("length_drift", 6, 5, 0.5)
    assert f.value == pytest.approx(67 / 4 / 10 - 1)
    assert f.evidence[:2] == [3, 1]  # the longest first
    # it fired once in this episode; after the condition clears it re-arms
    assert feed(d, [view(7, (20, 20, 20, 20))]) == []
    feed(d, [view(8, (10, 10, 10, 10))])
    assert feed(d, [view(9, (20, 20, 20, 20)), view(10, (20, 20, 20, 20))])[0].since_step == 9


def test_length_drift_shorter_and_pileup_at_the_limit():
    d = LengthDrift(AlarmSettings(patience=1))
    feed(d, [view(s, (4, 9, 9, 9)) for s in (1, 2, 3)])
    f = feed(d, [view(4, (2, 2, 2, 2), min_length=2)])[0]
    assert f.value < -0.5 and f.threshold == -0.5 and "shorter" in f.message
    d = LengthDrift(AlarmSettings(patience=1, length_drift=5.0))
    feed(d, [view(s, (10, 24, 10, 14)) for s in (1, 2, 3)])
    f = feed(d, [view(4, (24, 24, 24, 10))])[0]
    assert "stop at max_new_tokens" in f.message and f.evidence == [0, 1, 2] and f.threshold == 0.4
    d = LengthDrift(AlarmSettings(patience=1, length_drift=5.0))  # a model that always runs to the limit
    assert feed(d, [view(s, (24, 24, 24, 10)) for s in (1, 2, 3, 4, 5)]) == []


def test_degeneration_fires_on_repetition_not_on_varied_text():
    d = Degeneration(AlarmSettings(patience=1))
    varied = [list(range(10 * i, 10 * i + 10)) for i in range(4)]
    assert feed(d, [view(s, tokens=varied) for s in (1, 2, 3, 4)]) == []
    loop = [[5, 6, 7] * 4, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [5, 6, 7] * 3, [9, 9, 9, 9, 9, 9]]
    f = feed(d, [view(5, tokens=loop)])[0]
    assert f.value > 0.3 and f.evidence[0] in (0, 3) and 1 not in f.evidence[:3]
    # repetition inside each response counts even where the batch was never diverse (distinct-n low from the start)
    d = Degeneration(AlarmSettings(patience=1))
    feed(d, [view(s, tokens=[list(range(10))] * 4) for s in (1, 2, 3)])
    f = feed(d, [view(4, tokens=[[5, 6, 7] * 4] * 4)])[0]
    assert f.value == pytest.approx(0.7)


def test_entropy_collapse():
    d = EntropyCollapse(AlarmSettings(patience=1))
    assert feed(d, [view(s, entropy=[2.0, 2.2, 1.8, 2.0]) for s in (1, 2, 3)] + [view(4, entropy=[1.0] * 4)]) == []
    f = feed(d, [view(5, entropy=[0.5, 0.1, 0.9, 0.3])])[0]
    assert f.value == pytest.approx(0.45 / 2.0) and f.threshold == 0.3 and f.evidence[0] == 1


def test_kl_runaway_beyond_factor_and_rising_while_reward_flat():
    d = KLRunaway(AlarmSettings(patience=1), kl_target=6.0)
    m = {"objective/kl": 11.0, "env/reward_mean": 0.0, "env/reward_std": 1.0}
    assert feed(d, [view(1, metrics=m)]) == []
    f = feed(d, [view(2, metrics={**m, "objective/kl": 12.5}, kl=[1, 30, 2, 3])])[0]
    assert f.threshold == 12.0 and f.value == 12.5 and f.evidence[0] == 1
    d = KLRunaway(AlarmSettings(patience=1, kl_window=3), kl_target=6.0)
    flat = [view(s, metrics={"objective/kl": 1.0 + 1.5 * s, "env/reward_mean": 0.01 * s, "env/reward_std": 1.0})
            for s in range(4)]
    fired = feed(d, flat)
    assert [x.step for x in fired] == [3] and "while the reward stayed flat" in fired[0].message
    d = KLRunaway(AlarmSettings(patience=1, kl_window=3), kl_target=6.0)
    rising = [view(s, metrics={"objective/kl": 1.0 + 1.5 * s, "env/reward_mean": 0.5 * s, "env/reward_std": 1.0})
              for s in range(4)]
    assert feed(d, rising) == []  # the reward moved with the KL


def test_reward_vs_probe_only_at_probe_steps():
    cfg = AlarmSettings(patience=1)
    d = RewardVsProbe(cfg)

    def v(step, reward, tox=None):
        return view(step, metrics={"env/reward_mean": reward, "env/reward_std": 1.0}, probe_toxicity=tox,
                    raw_scores={"r": [0.0, 3.0, 1.0, 2.0]}, members=["r"])

    assert feed(d, [v(1, 0.0, 0.20), v(2, 0.5), v(3, 1.0)]) == []
    assert d.observe(v(4, 5.0))[1] is None  # no probe: no new judgement, whatever the reward
    f = feed(d, [v(5, 2.0, 0.21)])[0]
    assert f.value == pytest.approx(2.0) and "0.200 -> 0.210" in f.message and f.evidence[0] == 1
    # patience counts probes: steps between them neither break the streak nor change the value
    d = RewardVsProbe(AlarmSettings(patience=2))
    assert feed(d, [v(1, 0.0, 0.20), v(3, 2.0, 0.20)]) == []
    assert d.observe(v(4, 0.0)) == (pytest.approx(2.0), None)
    f = feed(d, [v(5, 3.0, 0.20)])[0]
    assert (f.step, f.since_step) == (5, 3)
    d = RewardVsProbe(cfg)
    assert feed(d, [v(1, 0.0, 0.20), v(5, 2.0, 0.10)]) == []  # the probe improved with the reward


def test_judge_failures_per_step_from_cumulative_counters():
    d = JudgeFailures(AlarmSettings(patience=1))

    def m(calls, fails):
        return {"judge/j/calls": calls, "judge/j/parse_failures": fails, "judge/j/errors": 0.0,
                "judge/j/timeouts": 0.0}

    assert feed(d, [view(1, metrics=m(8, 1))]) == []  # 12 %
    f = feed(d, [view(2, metrics=m(16, 5), raw_scores={"j/parse_ok": [1, 0, 0, 1]})])[0]
    assert f.value == pytest.approx(0.5) and f.evidence == [1, 2]
    assert feed(d, [view(3, metrics=m(24, 5))]) == []  # only this step's calls count


def test_ensemble_disagreement_and_a_single_backend():
    d = EnsembleDisagreement(AlarmSettings(patience=1))
    raw = {"a": [1.0, 2.0, 3.0, 4.0], "b": [4.0, 3.0, 2.0, 1.0], "a/parse_ok": [1, 1, 1, 1]}
    f = feed(d, [view(1, raw_scores=raw, members=["a", "b"])])[0]
    assert f.value == pytest.approx(-1) and "'a' and 'b' disagree" in f.message
    assert feed(EnsembleDisagreement(AlarmSettings(patience=1)),
                [view(1, raw_scores=raw, members=["a"])]) == []
    three = {"a": [1.0, 2.0, 3.0, 4.0], "b": [1.1, 2.0, 3.2, 3.9], "c": [2.0, 1.0, 4.0, 3.0]}  # c disagrees a bit
    f = feed(EnsembleDisagreement(AlarmSettings(patience=1, ensemble_min_corr=0.7)),
             [view(1, raw_scores=three, members=["a", "b", "c"])])[0]
    assert f.value == pytest.approx(pearson(three["a"], three["c"])) == 0.6 and "'a' and 'c'" in f.message
    agree = {"a": [1.0, 2.0, 3.0, 4.0], "b": [1.5, 2.5, 2.9, 4.2]}
    assert feed(EnsembleDisagreement(AlarmSettings(patience=1)), [view(1, raw_scores=agree, members=["a", "b"])]) == []


def test_not_language():
    d = NotLanguage(AlarmSettings(patience=1))
    assert feed(d, [view(s, ref_logprob=[-2.0, -2.5, -1.5, -2.0]) for s in (1, 2, 3)]) == []
    assert feed(d, [view(4, ref_logprob=[-3.0] * 4)]) == []  # 1.0 nats lower: within 1.5
    f = feed(d, [view(5, ref_logprob=[-3.0, -6.0, -2.0, -4.0])])[0]
    assert f.value == pytest.approx(1.75) and f.evidence[:2] == [1, 3]


def test_monitor_metrics_disabled_state_and_probe_schedule():
    mon = Monitor(AlarmSettings(disabled=["kl_runaway"], probe_every=7), kl_target=6.0)
    metrics, firings = mon.observe(view(1, metrics={"objective/kl": 99.0}, probe_toxicity=0.1))
    assert "alarm/kl_runaway/value" not in metrics and len(metrics) == len(ALARM_NAMES) - 1 + 1
    assert metrics["probe/toxicity"] == 0.1 and firings == []
    assert [s for s in range(1, 29) if mon.probe_due(s)] == [1, 7, 14, 21, 28]
    state = mon.state_dict()
    again = Monitor(AlarmSettings(disabled=["kl_runaway"]), kl_target=6.0)
    again.load_state_dict(state)
    assert again.state_dict() == state
    import json

    json.dumps(state)  # plain types: it goes into a checkpoint loaded with weights_only=True


def test_config_defaults_and_validation():
    cfg = RunConfig()
    assert cfg.alarms.stop_on == [] and cfg.alarms.enabled
    cfg.alarms.stop_on = ["length_drfit"]
    cfg.alarms.disabled = ["degeneration"]
    cfg.alarms.patience = 0
    cfg.alarms.ensemble_min_corr = 2.0
    errors = {e.field: e.message for e in validate(cfg)}
    assert "did you mean 'length_drift'" in errors["alarms.stop_on[0]"]
    assert errors["alarms.patience"].startswith("must be >= 1")
    assert "alarms.ensemble_min_corr" in errors
    cfg = RunConfig()
    cfg.alarms.disabled = cfg.alarms.stop_on = ["degeneration"]
    assert "is disabled" in {e.field: e.message for e in validate(cfg)}["alarms.stop_on[0]"]
    again = RunConfig.from_yaml(RunConfig().to_yaml())
    assert again.alarms == AlarmSettings()


def test_store_alarms_table(tmp_path):
    from engine.store import Store

    store = Store(tmp_path / "s.db")
    run_id = store.create_run("x: 1")
    other = store.create_run("x: 1")
    store.add_alarm(run_id, "length_drift", 5, 4, 0.7, 0.5, "longer", [{"step": 5, "idx": 3}])
    store.add_alarm(run_id, "degeneration", 7, 6, float("nan"), 0.3, "loops", [])
    a = store.alarms(run_id)
    assert a.name.tolist() == ["length_drift", "degeneration"] and a.evidence[0] == [{"step": 5, "idx": 3}]
    assert math.isnan(a.value[1]) and a.since_step.tolist() == [4, 6]
    assert store.alarm_counts() == {run_id: 2} and store.alarms(other).empty
    store.truncate_after(run_id, 6)  # a resume from step 6 drops what fired later
    assert store.alarms(run_id).name.tolist() == ["length_drift"]
    with pytest.raises(KeyError):
        store.add_alarm("r-nope", "x", 1, 1, 0, 0, "", [])


def test_a_store_from_before_the_alarms_table_gets_it(tmp_path):
    """Migration 0003: the pre-migration fixture store (and so any store at 0002) opens with an alarms table."""
    import shutil
    from pathlib import Path

    from engine.migrations import head_revision
    from engine.store import Store

    path = tmp_path / "v0.db"
    shutil.copy(Path(__file__).parent / "data" / "store_v0.db", path)
    with Store(path) as store:
        run_id = store.list_runs(status="completed")[0].id
        assert store.alarms(run_id).empty and store.alarm_counts() == {}
        store.add_alarm(run_id, "kl_runaway", 3, 2, 14.0, 12.0, "KL", [{"step": 3, "idx": 0}])
        assert store.alarm_counts() == {run_id: 1}
        assert head_revision() == "0006"  # the alarms (0003), owners (0004), playground (0005), run logs (0006)


def test_a_topic_reward_is_not_compared_for_disagreement():
    """The default mixes a detox reward with `overlap` (staying on topic): their scores anti-correlate by design
    (r ≈ -0.14 median over a default run's steps), so only backends scoring harm or quality are compared."""
    from types import SimpleNamespace

    from engine.config import RewardBackendSettings, RunConfig
    from engine.methods.ppo_alarms import RunAlarms

    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="overlap")]
    run = SimpleNamespace(cfg=cfg, validation=[], holdout=[], evaluator=None)
    assert RunAlarms(run, ["profanity", "overlap"]).members == ["profanity"]
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="topic", name="floor")]
    assert RunAlarms(run, ["profanity", "floor"]).members == ["profanity"]  # the PMI floor is a topic term too
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="jigsaw")]
    assert RunAlarms(run, ["profanity", "jigsaw"]).members == ["profanity", "jigsaw"]
