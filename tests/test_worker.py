"""The worker loop on a real SQLite file with the tiny GPT-2: runs, failures, cancellation, order, restarts, RLHF.

Workers run here on threads of the test process (each with its own Store, owner id and heartbeats, as a process
has); tests/test_worker_process.py runs them as real processes and kills them.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from engine.api import chain_links, runs_table
from engine.config import ConfigError, RewardBackendSettings, RunConfig
from engine.store import Run, Store, utcnow
from engine.worker import Worker, cancel, eta_seconds, submit, wait
from tests.waiting import wait_for as _wait_for


def tiny_config(model_dir, steps: int = 3, name: str = "tiny", evaluate: bool = True) -> RunConfig:
    cfg = RunConfig(name=name)
    cfg.evaluation.enabled = evaluate
    cfg.model.name_or_path = str(model_dir)
    cfg.model.device = "cpu"
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
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
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


@pytest.fixture
def start_worker(store):
    """Start a worker loop on a thread (poll 0.05 s); stopped (its run asked to stop) at the end of the test."""
    made: list[tuple[Worker, threading.Thread]] = []

    def start(lease_s: float | None = None) -> Worker:
        w = Worker(store.url, poll_s=0.05, lease_s=lease_s)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        made.append((w, t))
        return w

    yield start
    for w, t in made:
        w.stop("the test ended")
        t.join(60)
        assert not t.is_alive(), "worker loop did not stop"


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05) -> bool:
    return _wait_for(predicate, timeout, every)


def test_eta_from_step_times():
    assert eta_seconds([2.0, 4.0], step=2, total=10) == pytest.approx(8 * 3.0)
    assert eta_seconds([100.0] + [1.0] * 10, step=11, total=12) == pytest.approx(1.0)  # last 10 only
    assert eta_seconds([], step=0, total=10) is None
    assert eta_seconds([1.0], step=5, total=None) is None
    assert eta_seconds([1.0], step=12, total=10) == 0.0


def test_run_completes_with_metrics_progress_and_evaluations(store, start_worker, tiny_gpt2_dir):
    run_id = submit(store, tiny_config(tiny_gpt2_dir))
    w = start_worker()
    assert wait(store, run_id, timeout=120) == "completed", store.get_run(run_id).traceback
    r = store.get_run(run_id)
    assert (r.step, r.total_steps, r.owner) == (3, 3, w.id)
    assert r.started_at is not None and r.finished_at >= r.started_at
    kl = store.metrics_wide(run_id, keys=["objective/kl", "env/reward/profanity"])
    assert list(kl.index) == [1, 2, 3]
    assert kl.notna().all().all()
    ev = store.evaluations(run_id)
    assert sorted(ev["phase"].value_counts().items()) == [("after", 8), ("before", 8)]
    assert r.summary["before"]["n"] == 8 and "pct_improvement_mean" in r.summary
    # progress as the worker stored it: the last phase it reported and one time per PPO step
    assert r.phase in ("eval_after", "save") and len(r.step_times) == 3 and all(t > 0 for t in r.step_times)
    assert wait_for(lambda: store.list_workers()[0].current_run is None)


def test_bad_config_raises_before_anything_is_queued(store, tiny_gpt2_dir, tmp_path):
    cfg = tiny_config(tiny_gpt2_dir)
    cfg.ppo.mini_batch_size = 3
    with pytest.raises(ConfigError) as err:
        submit(store, cfg)
    assert err.value.for_field("ppo.mini_batch_size")
    cfg = tiny_config(tiny_gpt2_dir)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg.data.source = str(empty)
    with pytest.raises(ConfigError) as err:
        submit(store, cfg)
    assert [e.field for e in err.value.errors] == ["data.source"]
    assert store.list_runs() == []


def test_failed_run_records_error_and_traceback_and_worker_goes_on(store, start_worker, tiny_gpt2_dir, tmp_path):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    bad = submit(store, tiny_config(broken, name="bad"))
    good = submit(store, tiny_config(tiny_gpt2_dir, steps=1, name="good", evaluate=False))
    start_worker()
    assert wait(store, good, timeout=120) == "completed"
    r = store.get_run(bad)
    assert r.status == "failed"
    assert r.error and "no-such-architecture" in r.error
    assert r.traceback.startswith("Traceback") and "load_policy" in r.traceback
    # queue order: the bad run was taken first
    assert r.started_at <= store.get_run(good).started_at


def test_cancel_queued_and_running(store, start_worker, tiny_gpt2_dir):
    long_id = submit(store, tiny_config(tiny_gpt2_dir, steps=10_000, name="long", evaluate=False))
    queued_id = submit(store, tiny_config(tiny_gpt2_dir, name="waiting", evaluate=False))
    start_worker()
    assert wait_for(lambda: store.get_run(long_id).step >= 1, timeout=120)
    assert store.get_run(queued_id).status == "queued"

    assert cancel(store, queued_id) == "cancelled"  # at once, while the other run goes on
    assert store.get_run(queued_id).status == "cancelled"
    assert store.get_run(long_id).status == "running"

    step_at_cancel = store.get_run(long_id).step
    assert cancel(store, long_id) == "running"  # asked to stop; honoured between PPO steps
    assert wait(store, long_id, timeout=60) == "cancelled"
    r = store.get_run(long_id)
    assert r.error == "cancelled by the user"
    assert r.step <= step_at_cancel + 1  # within one PPO step
    assert r.finished_at is not None
    assert store.latest_step(long_id) == r.step
    with pytest.raises(ValueError, match="only queued or running"):
        cancel(store, long_id)
    with pytest.raises(KeyError):
        cancel(store, "r-nope")


def test_stopping_the_worker_interrupts_its_run_saying_why(store, start_worker, tiny_gpt2_dir):
    run_id = submit(store, tiny_config(tiny_gpt2_dir, steps=10_000, evaluate=False))
    w = start_worker()
    assert wait_for(lambda: store.get_run(run_id).step >= 1, timeout=120)
    w.stop("the worker received SIGTERM")
    assert wait(store, run_id, timeout=60) == "interrupted"
    r = store.get_run(run_id)
    assert r.error == f"the worker received SIGTERM (worker {w.id}); resumable"
    assert wait_for(lambda: store.list_workers() == [])  # it left the workers table


def test_a_new_worker_marks_a_dead_owners_run_and_takes_the_queued_ones(store, start_worker, tiny_gpt2_dir):
    dead = store.create_run(tiny_config(tiny_gpt2_dir).to_yaml(), name="dead")
    left = store.create_run(tiny_config(tiny_gpt2_dir, steps=1, evaluate=False).to_yaml(), name="left queued")
    with store.engine.begin() as conn:  # a process that died 10 s after its last heartbeat
        conn.execute(update(Run).where(Run.id == dead).values(
            status="running", owner="w-gone-1", started_at=utcnow(), heartbeat_at=utcnow() - timedelta(seconds=10)))
    start_worker(lease_s=5)
    assert wait(store, left, timeout=120) == "completed"
    r = store.get_run(dead)
    assert r.status == "interrupted" and "w-gone-1 sent no heartbeat" in r.error and r.finished_at is not None


# ---- RLHF chain: reward_model with then_ppo ----------------------------------------------------------


def test_reward_model_then_ppo_queues_ppo_first_rewarded_by_the_trained_model(store, start_worker, tiny_gpt2_dir):
    rm_id = submit(store, rlhf_config(tiny_gpt2_dir))
    other = submit(store, tiny_config(tiny_gpt2_dir, steps=1, name="queued-after", evaluate=False))
    assert chain_links(store.get_run(rm_id))["then_ppo"]
    start_worker()
    assert wait(store, rm_id, timeout=120) == "completed", store.get_run(rm_id).traceback
    assert wait_for(lambda: "ppo_run" in (store.get_run(rm_id).summary or {}), timeout=30)
    ppo_id = store.get_run(rm_id).summary["ppo_run"]
    assert wait(store, ppo_id, timeout=120) == "completed", store.get_run(ppo_id).traceback
    assert wait(store, other, timeout=120) == "completed"

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


def test_failed_or_cancelled_reward_model_queues_no_ppo(store, start_worker, tiny_gpt2_dir, tmp_path):
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    failing = submit(store, rlhf_config(tiny_gpt2_dir, name="failing", base_model=str(broken)))
    cancelled_queued = submit(store, rlhf_config(tiny_gpt2_dir, name="cancelled-queued"))
    long_id = submit(store, rlhf_config(tiny_gpt2_dir, name="cancelled-running", rm_steps=10_000))
    assert cancel(store, cancelled_queued) == "cancelled"
    start_worker()
    assert wait(store, failing, timeout=120) == "failed"
    assert wait_for(lambda: store.get_run(long_id).step >= 1, timeout=120)
    assert cancel(store, long_id) == "running"
    assert wait(store, long_id, timeout=60) == "cancelled"
    assert wait_for(lambda: "ppo_not_queued" in (store.get_run(long_id).summary or {}), timeout=30)

    assert {r.id for r in store.list_runs()} == {failing, cancelled_queued, long_id}  # no PPO run anywhere
    assert store.list_runs("queued") == []
    notes = {rid: store.get_run(rid).summary["ppo_not_queued"] for rid in (failing, cancelled_queued, long_id)}
    assert notes == {failing: "the reward-model run ended failed",
                     cancelled_queued: "the reward-model run was cancelled",
                     long_id: "the reward-model run ended cancelled"}
    assert runs_table([store.get_run(failing)])["chain"][0] == "no PPO: the reward-model run ended failed"
