"""The Resume button on the Live run and Runs pages (AppTest): it says what a resume will do, queues the run again
for a worker, and is disabled with the reason when the run cannot be resumed."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import RunConfig
from tests.test_pages_apptest import app, by_key, db  # noqa: F401 (db: the fixture)


def stopped_run(store, tmp_path: Path, status: str, steps_done: int, checkpoint_at: int | None,
                total: int = 28, name: str = "stopped") -> str:
    """A ppo run that trained `steps_done` of `total` steps and stopped `status`, with a PPO checkpoint after
    `checkpoint_at` (None: no checkpoint) and a before-evaluation."""
    run_id = store.create_run(RunConfig(name=name).to_yaml(), name=name, method="ppo", total_steps=total)
    store.set_status(run_id, "running")
    store.add_evaluations(run_id, "before", [{"idx": 0, "prompt": "p", "response": "r", "toxicity": 0.5}])
    for step in range(1, steps_done + 1):
        store.log_metrics(run_id, step, {"objective/kl": 0.1 * step})
    store.set_progress(run_id, steps_done, total)
    if checkpoint_at is not None:
        ckpt = tmp_path / "out" / run_id / "checkpoints" / f"step-{checkpoint_at:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "state.pt").write_bytes(b"a checkpoint")  # complete as far as resume_problem looks
        store.add_checkpoint(run_id, checkpoint_at, str(ckpt))
    if status == "interrupted":
        store.request_cancel(run_id, reason="the worker received SIGTERM; resumable")
    store.set_status(run_id, status, error=f"{status} at step {steps_done}")
    return run_id


def test_live_page_resume_says_what_happens_and_queues_the_run(db, tmp_path):  # noqa: F811
    run_id = stopped_run(db, tmp_path, "cancelled", steps_done=16, checkpoint_at=14)
    at = app("live", run_id)
    button = by_key(at.button, "resume-run")
    assert not button.disabled
    plan = "Resumes from step 14 of 28 (the 2 steps after it are redone); the before-evaluation is kept."
    assert button.help.startswith(plan)
    assert any(c.value.startswith(plan) for c in at.caption)
    assert not [b for b in at.button if b.key == "cancel-run"]

    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    r = db.get_run(run_id)
    assert (r.status, r.error, r.finished_at, r.owner) == ("queued", None, None, None)  # the worker takes it
    assert any(f"Run {run_id} is queued again" in i.value for i in at.info)
    assert [b for b in at.button if b.key == "cancel-run"]  # queued: Cancel instead of Resume
    assert not [b for b in at.button if b.key == "resume-run"]


def test_resume_is_disabled_with_the_reason(db, tmp_path):  # noqa: F811
    no_ckpt = stopped_run(db, tmp_path, "failed", steps_done=3, checkpoint_at=None, name="no-checkpoint")
    at = app("live", no_ckpt)
    button = by_key(at.button, "resume-run")
    assert button.disabled and "has no checkpoint to resume from" in button.help
    assert any("Resume is not possible" in c.value and "no checkpoint" in c.value for c in at.caption)
    from engine.api import Lab

    lab = Lab(db)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):  # what the button would call: refused
        lab.resume_run(no_ckpt)
    assert db.get_run(no_ckpt).status == "failed"

    reward_model = db.create_run(RunConfig(name="rm", method="reward_model").to_yaml(), name="rm",
                                 method="reward_model")
    db.set_status(reward_model, "running")
    db.set_status(reward_model, "failed", error="boom")
    at = app("live", reward_model)
    assert by_key(at.button, "resume-run").disabled
    assert "a reward_model run cannot be resumed" in by_key(at.button, "resume-run").help


def test_runs_page_resumes_a_run_from_its_row(db, tmp_path):  # noqa: F811
    run_id = stopped_run(db, tmp_path, "interrupted", steps_done=7, checkpoint_at=7)
    at = app("runs")
    button = by_key(at.button, f"resume-{run_id}")  # on the run's own row, nothing to select first
    assert not button.disabled
    assert button.help.startswith("Resumes from step 7 of 28; the before-evaluation is kept.")
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert db.get_run(run_id).status == "queued"
