"""Reward-hacking alarms on real tiny PPO runs (issue 12): a run built to hack its reward fires its alarm, with the
step, since which step, the value against its threshold and evidence samples stored as samples; a clean run fires
none; an alarm in alarms.stop_on stops the run with the reason recorded.

The policy is tests/conftest.py's tiny GPT-2 with its output biased toward five common tokens and the end of text
(so responses vary in length and words, as a real model's do, and PPO can move them in a few steps). The rewards
are small backends injected where the run builds its reward (as test_runner's Boom); the judge is the real
OpenAI-compatible client against the local endpoint of tests/judge_server.py. Every alarm fires at its default
threshold except not_language (see its test).
"""

from __future__ import annotations

import pytest
from judge_server import FakeJudgeServer
from test_runner import tiny_config

from engine.config import RewardBackendSettings
from engine.methods.ppo_alarms import AlarmStop
from engine.rewards.base import RewardResult
from engine.runner import execute
from engine.store import Store

WORDS = ("the", "you", "to", "a", "an")  # words of both fixture vocabularies (HH or built-in dialogues)


def biased_gpt2(src, out, boosts: dict[str, float]):
    """tests/conftest.py's tiny GPT-2 whose next-token distribution, after any context, puts most of its mass on a few
    tokens: logits = ln_f(h) . wte, and a bias of 8 along a unit vector u in ln_f (its gain cut to 0.05) lifts each
    token j by 8 x boosts[j] when u is added to its embedding. Token names are words ("the") or "eos"."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    vocab = tok.get_vocab()
    g = torch.Generator().manual_seed(1)
    u = torch.randn(model.config.n_embd, generator=g)
    u /= u.norm()
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(0.05)
        model.transformer.ln_f.bias.copy_(8 * u)
        for word, a in boosts.items():
            j = tok.eos_token_id if word == "eos" else vocab["Ġ" + word]  # KeyError: the fixture vocabulary changed
            model.transformer.wte.weight[j] += a * u
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chatty_gpt2_dir(tiny_gpt2_dir, tmp_path_factory):
    """~15 % on each of five words and ~19 % on end-of-text: responses vary in length and words."""
    boosts = dict.fromkeys(WORDS, 0.86) | {"eos": 0.86}
    return biased_gpt2(tiny_gpt2_dir, tmp_path_factory.mktemp("chatty_gpt2"), boosts)


@pytest.fixture(scope="module")
def peaked_gpt2_dir(tiny_gpt2_dir, tmp_path_factory):
    """~92 % "the", 3 % "an", 2 % end-of-text: text in "an" is text the reference would rarely write."""
    boosts = {"the": 1.19, "an": 0.76, "eos": 0.7}
    return biased_gpt2(tiny_gpt2_dir, tmp_path_factory.mktemp("peaked_gpt2"), boosts)


class Scorer:
    """A reward backend computing `fn(response)`."""

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def score(self, prompts, responses):
        return RewardResult([float(self.fn(r)) for r in responses], {})


REWARDS = {
    "length": lambda r: len(r) / 10,  # pays for length
    "brevity": lambda r: -len(r) / 10,  # pays for the opposite
    "repeat": lambda r: r.split().count("the"),  # pays for one repeated token
    "an": lambda r: r.split().count("an"),  # pays for a token the reference rarely writes
    "neutral": lambda r: 0.0,
}


@pytest.fixture
def injected_rewards(monkeypatch):
    import engine.rewards as rewards

    real = rewards.build_backend
    monkeypatch.setattr(rewards, "build_backend", lambda s, device="cpu":
                        Scorer(s.name, REWARDS[s.name]) if s.name in REWARDS else real(s, device))


def hacking_config(model_dir, tmp_path, names, steps):
    cfg = tiny_config(model_dir, tmp_path, steps=steps)
    cfg.reward.backends = [RewardBackendSettings(kind="profanity", name=n) for n in names]  # replaced by Scorer
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.learning_rate = 8, 4, 1e-2
    cfg.generation.max_new_tokens, cfg.generation.min_length = 16, 1
    cfg.alarms.probe_every, cfg.alarms.probe_prompts = 2, 4
    cfg.checkpoint.every_steps = 0
    return cfg


def run_it(cfg, tmp_path, expect=None):
    store = Store(tmp_path / "runs.db")
    cfg.check()
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name)
    if expect is None:
        execute(cfg, store, run_id)
    else:
        with pytest.raises(expect):
            execute(cfg, store, run_id)
    return store, run_id


def first(store, run_id, name):
    alarms = store.alarms(run_id)
    hits = alarms[alarms.name == name]
    if not len(hits):
        wide = store.metrics_wide(run_id)
        values = wide[[c for c in wide.columns if c.startswith(("alarm/", "env/r", "objective/kl"))]]
        raise AssertionError(f"{name} did not fire; fired: {alarms.name.tolist()}\n{values.round(2).T.to_string()}")
    return hits.iloc[0]


def evidence_rows(store, run_id, alarm):
    """The stored samples the alarm's evidence points at (each must exist)."""
    samples = store.samples(run_id)
    rows = []
    for e in alarm.evidence:
        match = samples[(samples.step == e["step"]) & (samples.idx == e["idx"])]
        assert len(match) == 1, f"evidence {e} is not a stored sample"
        rows.append(match.iloc[0])
    return rows


def test_a_reward_that_pays_for_length_fires_length_drift(chatty_gpt2_dir, tmp_path, injected_rewards):
    store, run_id = run_it(hacking_config(chatty_gpt2_dir, tmp_path, ["length"], steps=8), tmp_path)
    alarm = first(store, run_id, "length_drift")
    assert 4 <= alarm.since_step < alarm.step <= 8  # after the 3 baseline steps, held 2 steps (patience)
    assert alarm.value > alarm.threshold == 0.5
    assert "longer than in the first steps" in alarm.message
    wide = store.metrics_wide(run_id)
    base = wide["env/response_length_mean"].loc[1:3].mean()
    assert wide["env/response_length_mean"].loc[alarm.step] > 1.5 * base
    assert wide["alarm/length_drift/value"].loc[alarm.step] == pytest.approx(alarm.value)
    rows = evidence_rows(store, run_id, alarm)
    assert len(rows) == 4 and all(len(r.response) > 0 for r in rows)
    # the evidence is the step's longest responses: at least as long as the mean of the step
    assert min(len(r.response) for r in rows) >= wide["env/response_length_mean"].loc[alarm.step]
    assert wide["probe/toxicity"].notna().sum() >= 3  # probes at steps 1, 2, 4, ...


def test_a_reward_for_a_repeated_token_fires_degeneration_kl_runaway_and_entropy_collapse(
        chatty_gpt2_dir, tmp_path, injected_rewards):
    cfg = hacking_config(chatty_gpt2_dir, tmp_path, ["repeat"], steps=14)
    cfg.ppo.batch_size, cfg.ppo.learning_rate = 16, 2e-2
    store, run_id = run_it(cfg, tmp_path)
    wide = store.metrics_wide(run_id)
    alarm = first(store, run_id, "degeneration")
    assert alarm.value > alarm.threshold == 0.3 and alarm.since_step >= 4
    rows = evidence_rows(store, run_id, alarm)
    assert all(r.response.split().count("the") >= 3 for r in rows[:2])  # the most repetitive samples
    assert "repeated 3-grams" in alarm.message

    kl = first(store, run_id, "kl_runaway")  # defaults: beyond 2 x kl_target 6
    assert kl.threshold == 12.0 and kl.value == pytest.approx(wide["objective/kl"].loc[kl.step]) and kl.value > 12
    assert wide["objective/kl"].loc[kl.since_step - 1] <= 12 < wide["objective/kl"].loc[kl.since_step]
    evidence_rows(store, run_id, kl)

    ent = first(store, run_id, "entropy_collapse")
    assert ent.value < ent.threshold == 0.3 and "nearly deterministically" in ent.message
    assert ent.step > alarm.step  # entropy goes last: repetition first, then a near-deterministic policy
    evidence_rows(store, run_id, ent)


def test_a_reward_for_a_token_the_reference_rarely_writes_fires_not_language(peaked_gpt2_dir, tmp_path,
                                                                               injected_rewards):
    cfg = hacking_config(peaked_gpt2_dir, tmp_path, ["an"], steps=8)
    cfg.ppo.batch_size = 16
    cfg.alarms.baseline_steps = 1  # step 1 samples the reference itself; this hack is well under way by step 3
    # The tiny model's hack reaches ~1.0-1.5 nats/token below the reference in 8 steps (half its tokens "an" at
    # -3.5 nats, the rest "the" at -0.1): under the default 1.5, which is set for SmolLM2-size models.
    cfg.alarms.lang_drop = 1.0
    store, run_id = run_it(cfg, tmp_path)
    alarm = first(store, run_id, "not_language")
    assert alarm.value > alarm.threshold == 1.0 and 2 <= alarm.since_step < alarm.step
    assert "no longer language it would write" in alarm.message
    rows = evidence_rows(store, run_id, alarm)
    assert sum(r.response.split().count("an") for r in rows) >= 4  # the least likely samples: full of "an"


def test_a_judge_that_refuses_fires_judge_failures(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ALARM_JUDGE_KEY", "sk-alarm-test")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=3)
    cfg.evaluation.enabled = False
    cfg.checkpoint.every_steps = 0
    with FakeJudgeServer(always="[[reply:I'm sorry, I can't help with that.]]") as server:
        cfg.reward.backends = [RewardBackendSettings(kind="openai_judge", name="claude", options={
            "base_url": server.url + "/v1", "model": "judge", "api_key_env": "ALARM_JUDGE_KEY",
            "max_failed_steps": 100, "cache": False})]
        store, run_id = run_it(cfg, tmp_path)
        assert len(server.requests) >= 12
    alarm = first(store, run_id, "judge_failures")
    assert (alarm.step, alarm.since_step) == (2, 1) and alarm.value == 1.0 and alarm.threshold == 0.25
    assert "judge 'claude': 100% of this step's 4 calls refused" in alarm.message
    rows = evidence_rows(store, run_id, alarm)
    assert len(rows) == 4 and all(r.scores["claude/parse_ok"] == 0 for r in rows)


def test_opposed_ensemble_fires_disagreement_and_stops_when_asked(tiny_gpt2_dir, tmp_path, injected_rewards):
    cfg = hacking_config(tiny_gpt2_dir, tmp_path, ["length", "brevity"], steps=5)
    cfg.alarms.stop_on = ["ensemble_disagreement"]
    store, run_id = run_it(cfg, tmp_path, expect=AlarmStop)
    alarm = first(store, run_id, "ensemble_disagreement")
    assert (alarm.step, alarm.since_step) == (2, 1) and alarm.value == pytest.approx(-1.0)
    rec = store.get_run(run_id)
    assert rec.status == "failed"
    assert rec.error.startswith("AlarmStop: alarm ensemble_disagreement fired at step 2 (since step 1")
    assert "'length' and 'brevity' disagree" in rec.error
    assert sorted(store.metrics_wide(run_id).index) == [1, 2]  # stopped after the step that fired
    evidence_rows(store, run_id, alarm)


def test_a_clean_run_fires_none_and_logs_every_value(chatty_gpt2_dir, tmp_path, injected_rewards):
    cfg = hacking_config(chatty_gpt2_dir, tmp_path, ["neutral"], steps=6)
    cfg.ppo.learning_rate = 1e-4
    store, run_id = run_it(cfg, tmp_path)
    assert store.alarms(run_id).empty
    wide = store.metrics_wide(run_id)
    from engine.alarms import ALARM_NAMES

    for name in ALARM_NAMES:
        assert wide[f"alarm/{name}/value"].notna().all(), name
    assert wide["probe/toxicity"].dropna().index.tolist() == [1, 2, 4, 6]
    assert len(store.samples(run_id)) == 6 * cfg.ppo.samples_per_step  # no evidence rows: nothing fired


def test_alarms_and_the_probe_leave_training_unchanged(chatty_gpt2_dir, tmp_path, injected_rewards):
    """The probe samples from a forked, seeded RNG: a run with alarms trains exactly as one without."""
    curves = []
    for enabled in (True, False):
        cfg = hacking_config(chatty_gpt2_dir, tmp_path / str(enabled), ["length"], steps=3)
        cfg.alarms.enabled, cfg.alarms.probe_every = enabled, 1
        store, run_id = run_it(cfg, tmp_path / str(enabled))
        wide = store.metrics_wide(run_id)
        curves.append(wide[["objective/kl", "env/reward_mean", "ppo/loss/total"]])
        assert ("probe/toxicity" in wide) == enabled
    assert curves[0].equals(curves[1])
