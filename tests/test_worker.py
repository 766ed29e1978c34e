"""The background worker on a real SQLite file with the tiny GPT-2: runs, failures, cancellation, order, restarts."""

from __future__ import annotations

import json
import time

import pytest

from engine.api import chain_links, runs_table
from engine.config import ConfigError, RewardBackendSettings, RunConfig
from engine.store import Store
from engine.worker import RunManager, eta_seconds, get_manager


def tiny_config(model_dir, steps: int = 3, name: str = "tiny", evaluate: bool = True) -> RunConfig:
    cfg = RunConfig(name=name)
    cfg.evaluation.enabled = evaluate
    cfg.model.name_or_path = str(model_dir)
    cfg.model.device = "cpu"
    cfg.data.source = "builtin"
    cfg.data.holdout_size = 8
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 100
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, steps
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 1, 1, "none"
    cfg.generation.max_new_tokens = 8
    return cfg


def rlhf_config(model_dir, name: str = "rlhf", rm_steps: int = 2, base_model: str | None = None) -> RunConfig:
    """A reward model on the built-in HH pairs, then (then_ppo) one PPO step rewarded by it."""
    cfg = tiny_config(model_dir, steps=1, name=name, evaluate=False)
    cfg.method = "reward_model"
    r = cfg.reward_model
    r.then_ppo, r.base_model = True, base_model
    r.max_steps, r.batch_size, r.eval_pairs, r.max_length = rm_steps, 4, 4, 96
    cfg.data.max_prompt_tokens = 96
    return cfg


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Runs save checkpoints under output_dir "runs" (relative): keep them in the test's tmp dir."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "lab.db")
    yield s
    s.close()


@pytest.fixture
def manager_factory(store):
    made: list[RunManager] = []

    def make(start: bool = True) -> RunManager:
        m = RunManager(store, start=start)
        made.append(m)
        return m

    yield make
    for m in made:
        assert m.shutdown(cancel_current=True, timeout=60), "worker thread did not stop"


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_eta_from_step_times():
    assert eta_seconds([2.0, 4.0], step=2, total=10) == pytest.approx(8 * 3.0)
    assert eta_seconds([100.0] + [1.0] * 10, step=11, total=12) == pytest.approx(1.0)  # last 10 only
    assert eta_seconds([], step=0, total=10) is None
    assert eta_seconds([1.0], step=5, total=None) is None
    assert eta_seconds([1.0], step=12, total=10) == 0.0


def test_run_completes_with_metrics_progress_and_evaluations(store, manager_factory, tiny_gpt2_dir):
    m = manager_factory()
    run_id = m.submit(tiny_config(tiny_gpt2_dir))
    assert m.wait(run_id, timeout=120) == "completed", store.get_run(run_id).traceback
    r = store.get_run(run_id)
    assert (r.step, r.total_steps) == (3, 3)
    assert r.started_at is not None and r.finished_at >= r.started_at
    kl = store.metrics_wide(run_id, keys=["objective/kl", "env/reward/profanity"])
    assert list(kl.index) == [1, 2, 3]
    assert kl.notna().all().all()
    ev = store.evaluations(run_id)
    assert sorted(ev["phase"].value_counts().items()) == [("after", 8), ("before", 8)]
    assert r.summary["before"]["n"] == 8 and "pct_improvement_mean" in r.summary
    p = m.progress(run_id)
    assert (p.step, p.total, p.phase) == (3, 3, "done")
    assert len(p.step_times) == 3 and all(t > 0 for t in p.step_times)
    assert m.current() is None and m.queue() == []


def test_bad_config_raises_before_anything_is_queued(store, manager_factory, tiny_gpt2_dir, tmp_path):
    m = manager_factory()
    cfg = tiny_config(tiny_gpt2_dir)
    cfg.ppo.mini_batch_size = 3
    with pytest.raises(ConfigError) as err:
        m.submit(cfg)
    assert err.value.for_field("ppo.mini_batch_size")
    cfg = tiny_config(tiny_gpt2_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg.data.source = str(empty)
    with pytest.raises(ConfigError) as err:
        m.submit(cfg)
    assert [e.field for e in err.value.errors] == ["data.source"]
    assert store.list_runs() == [] and m.queue() == []


def test_failed_run_records_error_and_traceback_and_worker_goes_on(store, manager_factory, tiny_gpt2_dir, tmp_path):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    m = manager_factory(start=False)
    bad = m.submit(tiny_config(broken, name="bad"))
    good = m.submit(tiny_config(tiny_gpt2_dir, steps=1, name="good", evaluate=False))
    assert m.queue() == [bad, good]
    m.start()
    assert m.wait(good, timeout=120) == "completed"
    r = store.get_run(bad)
    assert r.status == "failed"
    assert r.error and "no-such-architecture" in r.error
    assert r.traceback.startswith("Traceback") and "load_policy" in r.traceback
    # queue order: the bad run was taken first
    assert r.started_at <= store.get_run(good).started_at


def test_cancel_queued_and_running(store, manager_factory, tiny_gpt2_dir):
    m = manager_factory()
    long_id = m.submit(tiny_config(tiny_gpt2_dir, steps=10_000, name="long", evaluate=False))
    queued_id = m.submit(tiny_config(tiny_gpt2_dir, name="waiting", evaluate=False))
    assert wait_for(lambda: store.get_run(long_id).step >= 1, timeout=120)
    assert m.current() == long_id and m.queue() == [queued_id]

    assert m.cancel(queued_id) == "cancelled"  # at once, while the other run goes on
    assert store.get_run(queued_id).status == "cancelled" and m.queue() == []
    assert store.get_run(long_id).status == "running"

    step_at_cancel = store.get_run(long_id).step
    assert m.cancel(long_id) == "running"  # asked to stop; honoured between PPO steps
    assert m.wait(long_id, timeout=60) == "cancelled"
    r = store.get_run(long_id)
    assert r.step <= step_at_cancel + 1  # within one PPO step
    assert r.finished_at is not None
    assert store.latest_step(long_id) == r.step
    with pytest.raises(ValueError, match="only queued or running"):
        m.cancel(long_id)
    with pytest.raises(KeyError):
        m.cancel("r-nope")


def test_restart_marks_running_interrupted_and_adopts_queued(store, manager_factory, tiny_gpt2_dir):
    dead = store.create_run(tiny_config(tiny_gpt2_dir).to_yaml(), name="dead")
    store.set_status(dead, "running")
    left = store.create_run(tiny_config(tiny_gpt2_dir, steps=1, evaluate=False).to_yaml(), name="left queued")
    m = manager_factory(start=False)
    assert m.interrupted == [dead]
    r = store.get_run(dead)
    assert r.status == "interrupted" and r.error and r.finished_at is not None
    assert m.queue() == [left]
    m.start()
    assert m.wait(left, timeout=120) == "completed"


def test_get_manager_is_one_per_database(tmp_path):
    a = get_manager(str(tmp_path / "a.db"))
    try:
        assert get_manager(str(tmp_path / "a.db")) is a
        assert get_manager(f"sqlite:///{tmp_path / 'a.db'}") is a
        b = get_manager(str(tmp_path / "b.db"))
        assert b is not a and b.alive
        assert b.shutdown() and not b.alive
        assert get_manager(str(tmp_path / "b.db")) is b and b.alive  # a stopped manager starts again
    finally:
        for url in ("a.db", "b.db"):
            assert get_manager(str(tmp_path / url)).shutdown()


# ---- RLHF chain: reward_model with then_ppo ----------------------------------------------------------


def test_reward_model_then_ppo_queues_ppo_first_rewarded_by_the_trained_model(store, manager_factory, tiny_gpt2_dir):
    m = manager_factory(start=False)
    rm_id = m.submit(rlhf_config(tiny_gpt2_dir))
    other = m.submit(tiny_config(tiny_gpt2_dir, steps=1, name="queued-after", evaluate=False))
    assert chain_links(store.get_run(rm_id))["then_ppo"]
    m.start()
    assert m.wait(rm_id, timeout=120) == "completed", store.get_run(rm_id).traceback
    assert wait_for(lambda: "ppo_run" in (store.get_run(rm_id).summary or {}), timeout=30)
    ppo_id = store.get_run(rm_id).summary["ppo_run"]
    assert m.wait(ppo_id, timeout=120) == "completed", store.get_run(ppo_id).traceback
    assert m.wait(other, timeout=120) == "completed"

    rm, ppo = store.get_run(rm_id), store.get_run(ppo_id)
    assert (ppo.name, ppo.method, ppo.total_steps) == ("rlhf-ppo", "ppo", 1)
    assert rm.finished_at <= ppo.started_at <= store.get_run(other).started_at  # the chain goes on first
    ppo_cfg = RunConfig.from_yaml(ppo.config_yaml)  # the stored YAML names the reward model and where it came from
    assert ppo_cfg.parent_run == rm_id
    assert [(b.kind, b.name, b.options["model"]) for b in ppo_cfg.reward.backends] == [
        ("hf_classifier", "reward_model", rm.summary["model_path"])]
    assert store.metrics_wide(ppo_id)["env/reward/reward_model"].notna().all()  # PPO was rewarded by it
    table = runs_table(store.list_runs()).set_index("id")
    assert table.loc[ppo_id, "chain"] == f"rewarded by {rm_id}" and table.loc[rm_id, "chain"] == f"then PPO {ppo_id}"
    assert table.loc[other, "chain"] == ""


def test_failed_or_cancelled_reward_model_queues_no_ppo(store, manager_factory, tiny_gpt2_dir, tmp_path):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    m = manager_factory(start=False)
    failing = m.submit(rlhf_config(tiny_gpt2_dir, name="failing", base_model=str(broken)))
    cancelled_queued = m.submit(rlhf_config(tiny_gpt2_dir, name="cancelled-queued"))
    long_id = m.submit(rlhf_config(tiny_gpt2_dir, name="cancelled-running", rm_steps=10_000))
    assert m.cancel(cancelled_queued) == "cancelled"
    m.start()
    assert m.wait(failing, timeout=120) == "failed"
    assert wait_for(lambda: store.get_run(long_id).step >= 1, timeout=120)
    assert m.cancel(long_id) == "running"
    assert m.wait(long_id, timeout=60) == "cancelled"
    assert wait_for(lambda: "ppo_not_queued" in (store.get_run(long_id).summary or {}), timeout=30)

    assert {r.id for r in store.list_runs()} == {failing, cancelled_queued, long_id}  # no PPO run anywhere
    assert m.queue() == []
    notes = {rid: store.get_run(rid).summary["ppo_not_queued"] for rid in (failing, cancelled_queued, long_id)}
    assert notes == {failing: "the reward-model run ended failed",
                     cancelled_queued: "the reward-model run was cancelled",
                     long_id: "the reward-model run ended cancelled"}
    assert runs_table([store.get_run(failing)])["chain"][0] == "no PPO: the reward-model run ended failed"
