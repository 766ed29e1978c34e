"""Workers, CLI runs and the lab as REAL processes on one SQLite file, killed for real (SIGKILL, SIGTERM).

Each test starts `python -m engine worker` / `python -m engine run` subprocesses with a short lease
($RLAIF_LAB_LEASE_S) and waits on conditions in the store (generous timeouts, no wall-clock assertions).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.config import RewardBackendSettings, RunConfig
from engine.store import Store
from engine.worker import submit, wait
from tests.waiting import wait_for as _wait_for

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 8.0  # short, so a dead owner is found out in seconds; long enough for heartbeats (every lease/6) on a loaded 2-core machine


def tiny_config(model_dir, steps: int, name: str = "proc", evaluate: bool = False) -> RunConfig:
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
    cfg.generation.max_new_tokens = 8
    return cfg


def wait_for(predicate, timeout: float = 120.0, every: float = 0.1) -> bool:
    return _wait_for(predicate, timeout, every)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "RLAIF_LAB_LEASE_S": str(LEASE_S), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def procs(tmp_path, env):
    """Start engine subprocesses (cwd tmp_path, output in tmp_path/<name>.log); all killed at the end."""
    started: list[subprocess.Popen] = []

    def start(*args: str, name: str = "proc") -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process below)
        p = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        p.log_file = log
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        p.log_file.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "lab.db", lease_s=LEASE_S)
    yield s
    s.close()


def log_of(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def test_worker_process_executes_a_queued_run_and_leaves_cleanly(store, procs, tmp_path, tiny_gpt2_dir):
    cfg = tiny_config(tiny_gpt2_dir, steps=2, evaluate=True)
    run_id = submit(store, cfg)
    worker = procs("worker", "--db", store.url, "--once", "--poll-s", "0.2", name="worker")
    assert wait(store, run_id, timeout=300) == "completed", log_of(tmp_path, "worker")
    assert worker.wait(60) == 0  # --once: the queue is empty, it exits
    r = store.get_run(run_id)
    assert r.owner.startswith("w-") and f"-{worker.pid}-" in r.owner and r.step == 2 and len(r.step_times) == 2
    assert r.summary["before"]["n"] == 8 * cfg.evaluation.samples_per_prompt
    assert store.list_workers() == []  # unregistered on the way out


def test_sigkill_mid_run_leaves_it_running_until_the_lease_expires(store, procs, tmp_path, tiny_gpt2_dir):
    run_id = submit(store, tiny_config(tiny_gpt2_dir, steps=100_000))
    worker = procs("worker", "--db", store.url, "--poll-s", "0.2", name="worker")
    assert wait_for(lambda: store.get_run(run_id).step >= 2, timeout=300), log_of(tmp_path, "worker")
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(30) == -signal.SIGKILL
    killed_at_step = store.get_run(run_id).step
    # Nobody marks it while its last heartbeat is within the lease: poll expiry as any process would.
    seen_running_after_kill = 0
    while True:
        expired = store.expire_leases()
        r = store.get_run(run_id)
        if expired:
            break
        assert r.status == "running", r.error
        seen_running_after_kill += 1
        time.sleep(0.1)
    assert expired == [run_id] and seen_running_after_kill > 0
    assert r.status == "interrupted"
    # marked only once its heartbeat was older than the lease
    assert (r.finished_at - r.heartbeat_at).total_seconds() >= LEASE_S
    assert f"{r.owner} sent no heartbeat for" in r.error and f"lease {LEASE_S:g} s" in r.error
    assert r.step >= killed_at_step and store.latest_step(run_id) == r.step  # every finished step's metrics kept
    assert [w.pid for w in store.list_workers()] == [worker.pid]  # its row stays (silent) until pruned
    assert not store.live_workers()


def test_sigterm_stops_the_run_interrupted_and_the_worker_exits_cleanly(store, procs, tmp_path, tiny_gpt2_dir):
    run_id = submit(store, tiny_config(tiny_gpt2_dir, steps=100_000))
    waiting = submit(store, tiny_config(tiny_gpt2_dir, steps=1, name="waiting"))
    worker = procs("worker", "--db", store.url, "--poll-s", "0.2", name="worker")
    assert wait_for(lambda: store.get_run(run_id).step >= 2, timeout=300), log_of(tmp_path, "worker")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0, log_of(tmp_path, "worker")
    r = store.get_run(run_id)
    assert r.status == "interrupted"
    assert r.error.startswith("the worker received SIGTERM (worker w-") and r.error.endswith("resumable")
    assert store.latest_step(run_id) == r.step >= 2
    # it stopped at a step boundary and saved a checkpoint of that step: nothing trained is lost, Resume works
    from engine.runner import resume_problem

    assert store.checkpoints(run_id)[-1].step == r.step and resume_problem(store, run_id) is None
    assert store.get_run(waiting).status == "queued"  # not taken by a worker on its way out
    assert store.list_workers() == []
    assert "stopped" in log_of(tmp_path, "worker")


def test_a_cli_runs_live_lease_is_not_marked_by_a_worker_or_the_lab_starting(store, procs, tmp_path, tiny_gpt2_dir):
    from engine.api import Lab

    cfg_path = tmp_path / "long.yaml"
    tiny_config(tiny_gpt2_dir, steps=100_000, name="cli-long").save(cfg_path)
    cli = procs("--db", store.url, "run", str(cfg_path), name="cli")
    assert wait_for(lambda: any(r.step >= 1 for r in store.list_runs()), timeout=300), log_of(tmp_path, "cli")
    [run] = store.list_runs()
    assert run.owner.startswith("cli-") and f"-{cli.pid}-" in run.owner

    worker = procs("worker", "--db", store.url, "--poll-s", "0.2", name="worker")  # a worker starts meanwhile
    lab = Lab(Store(store.url, lease_s=LEASE_S), start_worker=False, housekeeping_s=0)  # and a UI
    assert wait_for(lambda: bool(store.live_workers()), timeout=300), log_of(tmp_path, "worker")
    # Through three whole lease periods of the CLI's heartbeats, the worker and the lab's reads leave it alone.
    beat0 = store.get_run(run.id).heartbeat_at
    while (store.get_run(run.id).heartbeat_at - beat0).total_seconds() < 3 * LEASE_S:
        assert lab.status(run.id).status == "running"
        assert [r.status for r in lab.list_runs()] == ["running"]
        assert store.expire_leases() == []
        time.sleep(0.2)
    assert cli.poll() is None and worker.poll() is None
    assert store.get_run(run.id).owner == run.owner  # not taken over either
    lab.cancel_run(run.id)
    assert cli.wait(120) == 1, log_of(tmp_path, "cli")  # the CLI reports the cancelled run and exits non-zero
    assert store.get_run(run.id).status == "cancelled"
    assert f"run {run.id}: cancelled" in log_of(tmp_path, "cli")
    lab.close()


def test_cli_run_sigkilled_is_interrupted_once_its_lease_expires(store, procs, tmp_path, tiny_gpt2_dir):
    cfg_path = tmp_path / "long.yaml"
    tiny_config(tiny_gpt2_dir, steps=100_000, name="cli-killed").save(cfg_path)
    cli = procs("--db", store.url, "run", str(cfg_path), name="cli")
    assert wait_for(lambda: any(r.step >= 2 for r in store.list_runs()), timeout=300), log_of(tmp_path, "cli")
    cli.send_signal(signal.SIGKILL)
    cli.wait(30)
    [run] = store.list_runs()
    assert run.status == "running"
    said = []

    def engine_runs() -> bool:  # `engine runs` is one of the processes that notice a dead owner
        out = subprocess.run([sys.executable, "-m", "engine", "--db", store.url, "runs"], cwd=tmp_path,
                             env={**os.environ, "RLAIF_LAB_LEASE_S": str(LEASE_S), "PYTHONPATH": str(ROOT)},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        if f"run {run.id}: interrupted" in out.stderr:
            said.append(out.stderr)
        return store.get_run(run.id).status == "interrupted"

    assert wait_for(engine_runs, timeout=120)
    assert said and "sent no heartbeat" in said[0]  # it was `engine runs` that marked it, and it said so
    r = store.get_run(run.id)
    assert r.status == "interrupted" and r.owner.startswith("cli-") and "sent no heartbeat" in r.error


def test_the_lab_starts_a_worker_and_survives_its_crash(store, tmp_path, monkeypatch, tiny_gpt2_dir):
    """The UI process never trains: on open it starts a worker process; SIGKILL that worker mid-run and the pages
    still load, the run is marked interrupted once its lease expires, a new worker is started and takes new runs."""
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    from app import state

    monkeypatch.setenv("RLAIF_LAB_DB", str(tmp_path / "lab.db"))
    monkeypatch.setenv("RLAIF_LAB_LEASE_S", str(LEASE_S))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.chdir(tmp_path)
    st_config.set_option("server.address", "127.0.0.1")  # AppTest has no server: it serves loopback, as the lab does
    state._lab.clear()
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    try:
        at.run()
        at.switch_page("../pages/runs.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert wait_for(lambda: bool(store.live_workers()), timeout=300), list(tmp_path.glob("worker-*.log"))
        [first] = store.live_workers()
        assert first.pid != os.getpid() and first.host  # a process of its own
        cmdline = Path(f"/proc/{first.pid}/cmdline")
        if cmdline.exists():  # the store's URL travels in the environment: a password would show in `ps`
            assert "lab.db" not in cmdline.read_text() and "worker" in cmdline.read_text()
        run_id = submit(store, tiny_config(tiny_gpt2_dir, steps=100_000, name="crashes"))
        assert wait_for(lambda: store.get_run(run_id).step >= 1, timeout=300)
        assert store.get_run(run_id).owner == first.id
        os.kill(first.pid, signal.SIGKILL)

        def page_loads_and_lab_recovered() -> bool:
            at.switch_page("../pages/live.py").run()  # every read of the pages is a chance for the lab to notice
            assert not at.exception, [e.value for e in at.exception]
            live = store.live_workers()
            return store.get_run(run_id).status == "interrupted" and bool(live) and live[0].pid != first.pid

        assert wait_for(page_loads_and_lab_recovered, timeout=300, every=0.5)
        [second] = store.live_workers()
        assert "sent no heartbeat" in store.get_run(run_id).error
        at.switch_page("../pages/runs.py").run()  # the Runs page lists it
        assert not at.exception, [e.value for e in at.exception]
        assert [e.label for e in at.expander][0] == "Workers: 1 live"
        table = at.expander[0].dataframe[0].value
        assert second.id in table["worker"].tolist()
        after = submit(store, tiny_config(tiny_gpt2_dir, steps=1, name="after the crash"))
        assert wait(store, after, timeout=300) == "completed"
        assert store.get_run(after).owner == second.id
    finally:
        for w in store.list_workers():
            try:
                os.kill(w.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        assert wait_for(lambda: not store.live_workers() and not store.list_runs("running"), timeout=120)
        state._lab.clear()


def test_an_idle_worker_exits_by_itself_after_its_queue_is_done(store, procs, tmp_path, tiny_gpt2_dir):
    """What the lab starts its workers with (--idle-exit-s), so none lingers for good after its UI is gone."""
    run_id = submit(store, tiny_config(tiny_gpt2_dir, steps=1))
    worker = procs("worker", "--db", store.url, "--poll-s", "0.2", "--idle-exit-s", "2", name="worker")
    assert worker.wait(300) == 0, log_of(tmp_path, "worker")  # it ran the queued run first, then went idle
    assert store.get_run(run_id).status == "completed"
    assert store.list_workers() == []
