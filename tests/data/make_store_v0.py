"""Make tests/data/store_v0.db: a small store written by the pre-Alembic schema (main at ff6e3dc, 2026-12-02).

Run it ONLY with that version of engine/store.py (it uses today's Store API, whatever it writes is the fixture):

    git worktree add /tmp/v0 ff6e3dc && python /tmp/v0/tests/data/make_store_v0.py tests/data/store_v0.db

(the script is not in that commit: copy it there first).

The database holds one run in every status (queued, running, completed, failed, cancelled, interrupted), with
metrics (one NaN), samples, evaluations (before and after), scores and checkpoint rows, so the migration test
(tests/test_migrations.py) can check that each of them survives the upgrade. Kept small (< 200 KB).
"""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout root, for `engine`
from engine.store import Store  # noqa: E402


def make(path: Path) -> None:
    if path.exists():
        path.unlink()
    store = Store(path)
    yaml_text = "name: fixture\nmethod: ppo\nppo:\n  max_ppo_steps: 3\n"
    ids = {}
    for status in ("completed", "failed", "cancelled", "interrupted", "running", "queued"):
        method = "dpo" if status == "cancelled" else "ppo"
        run_id = store.create_run(yaml_text, name=f"fixture-{status}", method=method, total_steps=3)
        ids[status] = run_id
        if status == "queued":
            continue
        store.set_status(run_id, "running", device="cpu")
        for step in (1, 2, 3):
            kl = math.nan if (status == "failed" and step == 3) else 0.1 * step
            store.log_metrics(run_id, step, {"objective/kl": kl, "env/reward_mean": -0.5 + 0.1 * step,
                                             "time/step_s": 1.5}, time=1_764_640_000.0 + step)
            store.add_samples(run_id, step, [
                {"prompt": f"Human: prompt {step}.{i}\n\nAssistant:", "response": f" reply {step}.{i} ✓",
                 "reward": -0.1 * i, "scores": {"profanity": 0.01 * i, "jigsaw/p_toxic": 0.2}}
                for i in range(2)])
            store.set_progress(run_id, step, 3)
        store.add_evaluations(run_id, "before", [
            {"prompt": f"hold-out {i}", "response": f"before {i}", "toxicity": 0.3 + 0.01 * i,
             "scores": {"profanity": 0.0}} for i in range(4)])
        if status == "completed":
            store.add_evaluations(run_id, "after", [
                {"prompt": f"hold-out {i}", "response": f"after {i}", "toxicity": 0.1 + 0.01 * i} for i in range(4)])
            store.add_scores(run_id, "rm:r-helpful", [{"phase": p, "idx": i, "value": 0.5 * i}
                                                      for p in ("before", "after") for i in range(4)])
            store.add_checkpoint(run_id, 3, f"runs/{run_id}/policy")
            store.set_summary(run_id, {"before": {"mean": 0.315, "n": 4}, "after": {"mean": 0.115, "n": 4},
                                       "pct_improvement_mean": -63.5, "mean_kl": 0.2})
            store.set_status(run_id, "completed")
        elif status == "failed":
            store.set_status(run_id, "failed", error="RuntimeError: boom", traceback="Traceback (most recent...)")
        elif status == "cancelled":
            store.request_cancel(run_id)
            store.set_status(run_id, "cancelled", error="cancelled by the user")
        elif status == "interrupted":
            store.add_checkpoint(run_id, 2, f"runs/{run_id}/checkpoint-2")
            store.set_status(run_id, "interrupted", error="process ended while the run was running")
    store.close()
    con = sqlite3.connect(path)  # fold the WAL into the file and shrink it, so one file is the whole fixture
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("VACUUM")
    con.close()
    print(f"wrote {path} ({path.stat().st_size} bytes): {ids}")


if __name__ == "__main__":
    make(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("store_v0.db")))
