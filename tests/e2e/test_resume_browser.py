"""The Resume button, in a real browser over a real lab: a tiny PPO run is cancelled mid-run (it saves a checkpoint),
the Live run page says what a resume will do, the button queues it, the lab's worker process resumes it from the
checkpoint and it completes with its curves continuing: every step once, none redone twice, none missing."""

from __future__ import annotations

import pytest

from engine.config import RewardBackendSettings, RunConfig
from engine.store import Store
from engine.worker import submit
from tests.e2e.conftest import start_server, stop_workers
from tests.waiting import wait_for as _wait_for

pytestmark = pytest.mark.browser
STEPS = 12


def wait_for(predicate, timeout: float = 300.0, every: float = 0.2) -> bool:
    return _wait_for(predicate, timeout, every)


def test_resume_button_continues_a_cancelled_run_in_the_worker(browser, tmp_path, tiny_gpt2_dir):
    cfg = RunConfig(name="resume-in-browser")
    cfg.output_dir = str(tmp_path / "runs")
    cfg.evaluation.enabled = False
    cfg.model.name_or_path, cfg.model.device = str(tiny_gpt2_dir), "cpu"
    cfg.data.source, cfg.data.holdout_size = "builtin", 8
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, STEPS
    cfg.generation.max_new_tokens = 8
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 3, 2
    db = tmp_path / "lab.db"
    server = start_server(db, tmp_path / "server.log", env={"RLAIF_LAB_LEASE_S": "10"})
    store = Store(db, lease_s=10)
    try:
        with browser.new_context() as context:
            pg = context.new_page()
            pg.set_default_timeout(60_000)
            pg.goto(server.url)  # opens the lab, which starts its worker process
            pg.wait_for_selector("[data-testid='stApp'] h1")
            assert wait_for(lambda: bool(store.live_workers()))
            run_id = submit(store, cfg)
            assert wait_for(lambda: store.get_run(run_id).step >= 4)
            store.request_cancel(run_id)  # the user's Cancel: stops at the next step boundary with a checkpoint
            assert wait_for(lambda: store.get_run(run_id).status == "cancelled")
            stopped = store.get_run(run_id)
            ckpt = max(c.step for c in store.checkpoints(run_id))
            assert ckpt == stopped.step < STEPS

            pg.goto(f"{server.url}/live?run={run_id}")
            pg.wait_for_function("() => document.body.innerText.includes('Status: cancelled')")
            plan = f"Resumes from step {ckpt} of {STEPS}"  # what the page says the button will do
            pg.wait_for_function(f"() => document.body.innerText.includes({plan!r})")
            pg.get_by_role("button", name="Resume").click()
            pg.wait_for_function("() => document.body.innerText.includes('is queued again')")
            # the page follows the resumed run (its panel refreshes while the run is active) until it completes
            pg.wait_for_function("() => document.body.innerText.includes('Status: completed')", timeout=600_000)
        r = store.get_run(run_id)
        assert (r.status, r.step) == ("completed", STEPS)
        metrics = store.metrics(run_id)
        assert sorted(metrics[metrics["key"] == "objective/kl"]["step"]) == list(range(1, STEPS + 1))
        assert not metrics.duplicated(["step", "key"]).any()  # curves continue: no duplicated step
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(30)
        stop_workers(db)
        store.close()
