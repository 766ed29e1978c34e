"""The store's schema migrations (engine/migrations, Alembic) on real SQLite files and, where the test says so, on an
empty real PostgreSQL database too (the `store_url` fixture). The v0 fixture is a SQLite file: those tests are SQLite's.

The fixture tests/data/store_v0.db was written by the store before migrations existed (tests/data/make_store_v0.py):
it must open upgraded with every row intact. A fresh store is built by the migrations and must equal the models.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from engine.migrations import SchemaVersionError, head_revision
from engine.store import Base, Store

V0 = Path(__file__).parent / "data" / "store_v0.db"
TABLES = ("runs", "metrics", "samples", "evaluations", "scores", "checkpoints")


def _rows(path: Path) -> dict[str, list[dict]]:
    """Every row of the v0 tables, read with plain sqlite3 (only the columns the table had in v0)."""
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    out = {t: [dict(r) for r in con.execute(f"SELECT * FROM {t} ORDER BY rowid")] for t in TABLES}  # noqa: S608
    con.close()
    return out


def _revision(path: Path) -> str | None:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


@pytest.fixture
def v0(tmp_path) -> Path:
    path = tmp_path / "store_v0.db"
    shutil.copy(V0, path)
    return path


def test_the_fixture_is_pre_migration_and_complete():
    assert _revision(V0) is None
    rows = _rows(V0)
    assert sorted(r["status"] for r in rows["runs"]) == sorted(
        ["queued", "running", "completed", "failed", "cancelled", "interrupted"])
    assert all(rows[t] for t in TABLES)
    assert V0.stat().st_size < 200_000


def test_v0_store_opens_upgraded_with_every_row_intact(v0):
    before = _rows(v0)
    with Store(v0) as store:
        assert store.migrated_from is None  # it had no version: taken over as the baseline, then upgraded
        after = _rows(v0)
        for table in TABLES:  # raw rows: every v0 column of every row, unchanged
            assert len(after[table]) == len(before[table]), table
            for old, new in zip(before[table], after[table], strict=True):
                assert {k: new[k] for k in old} == old, table
        # and through the store's API
        runs = {r.name: r for r in store.list_runs()}
        assert set(runs) == {f"fixture-{s}" for s in
                             ("queued", "running", "completed", "failed", "cancelled", "interrupted")}
        done = runs["fixture-completed"]
        assert (done.status, done.step, done.total_steps, done.device) == ("completed", 3, 3, "cpu")
        assert done.summary["pct_improvement_mean"] == -63.5 and done.finished_at >= done.started_at
        assert runs["fixture-cancelled"].method == "dpo" and runs["fixture-cancelled"].cancel_requested
        failed = runs["fixture-failed"]
        assert failed.error == "RuntimeError: boom" and failed.traceback.startswith("Traceback")
        kl = store.metrics_wide(failed.id)["objective/kl"]
        assert kl.iloc[:2].tolist() == pytest.approx([0.1, 0.2]) and math.isnan(kl.iloc[2])  # NaN stays a gap
        samples = store.samples(done.id)
        assert len(samples) == 6 and samples["scores"].iloc[1] == {"profanity": 0.01, "jigsaw/p_toxic": 0.2}
        assert samples["response"].iloc[0] == " reply 1.0 ✓"
        ev = store.evaluations(done.id)
        assert ev["phase"].value_counts().to_dict() == {"before": 4, "after": 4}
        assert store.scores(done.id, "rm:r-helpful")["value"].tolist() == [0.0, 0.5, 1.0, 1.5] * 2
        assert [c.step for c in store.checkpoints(runs["fixture-interrupted"].id)] == [2]
        # the upgraded store takes new rows as any other
        store.log_metrics(done.id, 4, {"objective/kl": 0.4})
        assert store.latest_step(done.id) == 4
    assert _revision(v0) == head_revision()
    with Store(v0) as again:  # a second open finds it at head and changes nothing
        assert again.migrated_from == head_revision()


def test_a_store_older_than_the_scores_table_gets_it(v0):
    con = sqlite3.connect(v0)
    con.execute("DROP TABLE scores")
    con.commit()
    con.close()
    with Store(v0) as store:
        run_id = store.list_runs(status="completed")[0].id
        store.add_scores(run_id, "s", [{"phase": "after", "idx": 0, "value": 1.0}])
        assert store.scores(run_id)["value"].tolist() == [1.0]


def _db_revision(url: str) -> str | None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_fresh_store_is_created_at_head_and_matches_the_models(store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with Store(store_url) as store:
        assert store.migrated_from is None
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []  # the migrations build exactly the schema the models describe
    assert _db_revision(store_url) == head_revision()


def test_a_store_at_the_baseline_is_upgraded_in_place(store_url):
    """A database left at revision 0001 (before leases) by an older lab: opening it runs 0002 on that backend, and
    its runs keep their rows (on PostgreSQL the batch ALTER is a plain ALTER TABLE ADD COLUMN)."""
    from alembic import command
    from sqlalchemy import create_engine

    from engine.migrations import _config

    engine = create_engine(store_url)
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0001")
        conn.execute(text("INSERT INTO runs (id, name, method, status, config_yaml, created_at, step, "
                          "cancel_requested) VALUES ('r-old', 'old', 'ppo', 'queued', 'a: 1', '2026-12-01 10:00:00',"
                          " 0, false)"))
    engine.dispose()
    assert _db_revision(store_url) == "0001"
    with Store(store_url) as store:
        assert store.migrated_from == "0001"
        old = store.get_run("r-old")
        assert (old.name, old.status, old.priority, old.owner) == ("old", "queued", 0, None)
        assert store.claim_run().id == "r-old"
    assert _db_revision(store_url) == head_revision()


def test_store_from_a_newer_version_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "future.db"
    with Store(path) as store:
        run_id = store.create_run("a: 1", name="kept")
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(SchemaVersionError) as err:
        Store(path)
    message = str(err.value)
    assert "9999_from_the_future" in message and repr(head_revision()) in message and "newer version" in message
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM runs WHERE id = ?", (run_id,)).fetchone() == ("kept",)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("9999_from_the_future",)
    con.close()


def test_a_half_applied_revision_is_completed_on_the_next_open(v0):
    """SQLite runs DDL outside transactions: a crash inside revision 0002 leaves some of its columns added and the
    version at the baseline. The next open completes the revision instead of failing on a duplicate column."""
    con = sqlite3.connect(v0)
    con.execute("ALTER TABLE runs ADD COLUMN owner VARCHAR(200)")  # what the crashed upgrade got done
    con.commit()
    con.close()
    with Store(v0) as store:
        assert store.migrated_from is None
        run_id = store.list_runs(status="queued")[0].id
        assert store.claim_run(run_id).owner == store.owner
    assert _revision(v0) == head_revision()


def test_processes_opening_a_fresh_store_together_migrate_it_once(store_url, tmp_path):
    """Workers started together on a new store each open it: one creates the schema, the others wait and find it.
    (Without the migration lock, two at once failed with "table alembic_version already exists".)"""
    import os
    import subprocess
    import sys
    import time

    go = tmp_path / "go"
    script = ("import os, sys, time\n"
              "from engine.store import Store\n"
              "while not os.path.exists(sys.argv[2]): time.sleep(0.005)\n"  # all open it at one moment
              "Store(sys.argv[1]).close()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, store_url, str(go)], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    time.sleep(5)  # let them import (not a correctness wait: a late one only makes the race less likely)
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e[-800:] for e in errors if e]
    store = Store(store_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
    store.close()


def test_the_migration_lock_never_opens_the_sqlite_file_itself(tmp_path, monkeypatch):
    """Closing any descriptor of an SQLite file drops SQLite's POSIX locks in the process (and another process may
    then reset a WAL holding committed rows: a browser test lost a cancel that way): the lock is on the folder."""
    import engine.migrations as migrations
    from engine import file_lock

    locked = []
    real = file_lock.exclusive

    def spy(path):
        locked.append(Path(path))
        return real(path)

    monkeypatch.setattr(migrations.file_lock, "exclusive", spy)
    Store(f"sqlite:///{tmp_path / 'lab.db'}").close()
    assert locked == [tmp_path.resolve()]
