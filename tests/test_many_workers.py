"""Many worker PROCESSES, one store, on both backends (a SQLite file; a real PostgreSQL database): three workers and
twelve queued tiny runs, each executed exactly once, none lost; a worker SIGKILLed mid-run, its run interrupted once
its lease expires and resumed by another worker (`--resume-interrupted`) from its checkpoint.

Exactly once is shown three ways: every worker logs each run it executes ("worker W: run R (name)", -v), and across
the three logs each run appears once; the store's owner of each run is the worker that logged it; and every
(step, key) metric exists once (a second execution would have written its steps again). Waits are on conditions in
the store with generous timeouts; nothing asserts a duration.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import RewardBackendSettings, RunConfig
from engine.store import Store
from engine.worker import submit
from tests.waiting import wait_for as _wait_for

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 10.0  # a dead worker is found out in seconds; long enough for heartbeats on a loaded 2-core machine


def tiny_config(model_dir, steps: int, name: str, checkpoint_every: int = 0, output_dir: str = "runs") -> RunConfig:
    cfg = RunConfig(name=name)
    cfg.evaluation.enabled = False
    cfg.model.name_or_path, cfg.model.device, cfg.model.mixed_precision = str(model_dir), "cpu", "none"
    cfg.data.source, cfg.data.holdout_size = "builtin", 4
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    p = cfg.ppo
    p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps = 2, 2, 1, steps
    cfg.generation.max_new_tokens = 8
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = checkpoint_every, 2
    cfg.output_dir = output_dir
    return cfg


def wait_for(predicate, timeout: float = 300.0, every: float = 0.1) -> bool:
    return _wait_for(predicate, timeout, every)


@pytest.fixture
def workers(tmp_path, store_url):
    """Start `python -m engine -v worker` processes on the test's store (logs in tmp_path/<name>.log); all killed
    at the end."""
    # one torch thread each, by the worker's own flag (not the environment: the first test checks the flag works)
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "RLAIF_LAB_LEASE_S": str(LEASE_S),
           "PYTHONPATH": str(ROOT), "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RLAIF_LAB_DB": store_url}
    started: list[tuple[subprocess.Popen, object]] = []

    def start(name: str, *extra: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 (closed below)
        p = subprocess.Popen([sys.executable, "-m", "engine", "-v", "worker", "--poll-s", "0.2", "--threads", "1",
                              *extra],
                             cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append((p, log))
        return p

    yield start
    for p, log in started:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        log.close()


def logs(tmp_path, names) -> str:
    return "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:] for n in names)


def test_three_workers_execute_twelve_runs_each_exactly_once(store_url, workers, tmp_path, tiny_gpt2_dir):
    store = Store(store_url, lease_s=LEASE_S)
    names = [f"w{i}" for i in range(3)]
    procs = {name: workers(name) for name in names}
    # all three serve before anything is queued, so they compete for every run
    assert wait_for(lambda: len(store.live_workers()) == 3), logs(tmp_path, names)
    runs = [submit(store, tiny_config(tiny_gpt2_dir, steps=1, name=f"tiny-{i}")) for i in range(12)]

    def all_done() -> bool:
        return all(r.status not in ("queued", "running") for r in store.list_runs())

    assert wait_for(all_done, timeout=900, every=0.5), logs(tmp_path, names)
    records = {r.id: r for r in store.list_runs()}
    assert sorted(records) == sorted(runs)  # none lost, none added
    assert {r.status for r in records.values()} == {"completed"}, {r.id: r.error for r in records.values()}

    worker_ids = {w.pid: w.id for w in store.live_workers()}
    executions: dict[str, list[str]] = {run_id: [] for run_id in runs}
    for name, proc in procs.items():
        for worker_id, run_id in re.findall(r"worker (w-\S+): run (r-\S+) \(", (tmp_path / f"{name}.log").read_text()):
            assert worker_id == worker_ids[proc.pid]
            executions[run_id].append(worker_id)
    assert {run_id: len(ws) for run_id, ws in executions.items()} == {run_id: 1 for run_id in runs}
    for run_id, [worker_id] in executions.items():
        assert records[run_id].owner == worker_id  # the store agrees on who executed it
        assert records[run_id].summary["threads"] == 1  # `--threads 1`: three workers do not fight for 2 cores
        metrics = store.metrics(run_id)
        assert len(metrics) and not metrics.duplicated(["step", "key"]).any()  # trained once
        assert set(metrics["step"]) == {1}
    shares = sorted(sum(1 for ws in executions.values() if ws == [w]) for w in worker_ids.values())
    print(f"runs per worker: {shares}")
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    assert all(p.wait(120) == 0 for p in procs.values()), logs(tmp_path, names)
    assert store.list_workers() == []
    store.close()


def test_a_killed_workers_run_is_resumed_by_another_from_its_checkpoint(store_url, workers, tmp_path,
                                                                          tiny_gpt2_dir):
    store = Store(store_url, lease_s=LEASE_S)
    names = ["a", "b"]
    procs = [workers(name, "--resume-interrupted") for name in names]
    assert wait_for(lambda: len(store.live_workers()) == 2), logs(tmp_path, names)
    steps = 8
    run_id = submit(store, tiny_config(tiny_gpt2_dir, steps=steps, name="killed", checkpoint_every=2,
                                       output_dir=str(tmp_path / "out")))

    def past_a_checkpoint() -> bool:
        r = store.get_run(run_id)
        return r.status == "running" and bool(store.checkpoints(run_id)) and r.step < steps

    assert wait_for(past_a_checkpoint), logs(tmp_path, names)
    first = store.get_run(run_id).owner
    [victim] = [p for p in procs if f"-{p.pid}-" in first]
    [survivor] = [p for p in procs if p is not victim]
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    killed_at = store.get_run(run_id)
    kept = store.checkpoints(run_id)[-1].step  # (the victim may have saved one more before it died)
    before = store.metrics(run_id)
    kept_ids = before[before["step"] <= kept]["id"].tolist()

    assert wait_for(lambda: store.get_run(run_id).status == "completed", timeout=600, every=0.2), \
        logs(tmp_path, names)
    r = store.get_run(run_id)
    assert r.owner != first and f"-{survivor.pid}-" in r.owner  # the other worker finished it
    assert r.step == steps >= killed_at.step
    metrics = store.metrics(run_id)
    assert not metrics.duplicated(["step", "key"]).any() and sorted(set(metrics["step"])) == list(range(1, steps + 1))
    # resumed, not restarted: the steps up to the checkpoint are the first execution's rows, untouched
    assert metrics[metrics["step"] <= kept]["id"].tolist() == kept_ids and kept_ids
    said = (tmp_path / f"{names[procs.index(survivor)]}.log").read_text()
    assert f"run {run_id}: its process died; queued again to resume from its checkpoint" in said
    store.close()
