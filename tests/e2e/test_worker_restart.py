"""A run survives a UI restart: the streamlit server is SIGKILLed while its worker process trains, the run goes on,
a new server over the same store shows it completing, using the same worker (it starts no second one)."""

from __future__ import annotations

import signal

import pytest

from engine.config import RewardBackendSettings, RunConfig
from engine.store import Store
from engine.worker import submit
from tests.e2e.conftest import start_server, stop_workers
from tests.waiting import wait_for as _wait_for

pytestmark = pytest.mark.browser


def wait_for(predicate, timeout: float = 300.0, every: float = 0.2) -> bool:
    return _wait_for(predicate, timeout, every)


def test_a_run_survives_a_ui_restart(browser, tmp_path, tiny_gpt2_dir):
    cfg = RunConfig(name="outlives-the-ui")
    cfg.output_dir = str(tmp_path / "runs")
    cfg.evaluation.enabled = False
    cfg.model.name_or_path, cfg.model.device = str(tiny_gpt2_dir), "cpu"
    cfg.data.source, cfg.data.holdout_size = "builtin", 8
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, 150
    cfg.generation.max_new_tokens = 8
    db = tmp_path / "lab.db"
    env = {"RLAIF_LAB_LEASE_S": "5"}
    servers = [start_server(db, tmp_path / "server-1.log", env=env)]
    store = Store(db, lease_s=5)
    try:
        with browser.new_context() as context:  # conftest's session browser (one sync Playwright per process)
            pg = context.new_page()
            pg.set_default_timeout(60_000)
            pg.goto(servers[0].url)  # the first page load opens the lab, which starts a worker process
            pg.wait_for_selector("[data-testid='stApp'] h1")
            assert wait_for(lambda: bool(store.live_workers())), list(tmp_path.glob("worker-*.log"))
            [worker] = store.live_workers()
            run_id = submit(store, cfg)
            assert wait_for(lambda: store.get_run(run_id).step >= 1)

            servers[0].process.send_signal(signal.SIGKILL)  # the UI dies mid-run
            servers[0].process.wait(30)
            at_kill = store.get_run(run_id).step
            assert wait_for(lambda: store.get_run(run_id).step > at_kill)  # training goes on without a UI
            assert store.get_run(run_id).status in ("running", "completed")

            servers.append(start_server(db, tmp_path / "server-2.log", env=env))  # the UI comes back
            pg.goto(f"{servers[1].url}/live?run={run_id}")
            pg.wait_for_selector("[data-testid='stApp'] h1")
            # the live page follows the run (its panel refreshes while the run is active) until it completes
            pg.wait_for_function("() => document.body.innerText.includes('Status: completed')", timeout=600_000)
        r = store.get_run(run_id)
        assert (r.status, r.step, r.owner) == ("completed", 150, worker.id)
        steps = store.metrics(run_id, keys=["objective/kl"])["step"].tolist()
        assert steps == list(range(1, 151))  # every step once: nothing lost, nothing repeated
        assert [w.id for w in store.live_workers()] == [worker.id]  # the new UI found it serving: no second worker
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(30)
        stop_workers(db)
        store.close()
