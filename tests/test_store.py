"""Tests of engine.store on both backends (a real SQLite file, a real PostgreSQL database: the `store_url` fixture):
round-trips, transitions, concurrency; and SQLite's own settings (WAL, paths, in-memory)."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from datetime import timezone

import pytest

from engine.store import Store, resolve_url


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


def test_wal_mode_and_foreign_keys_are_on(tmp_path):
    store = Store(tmp_path / "runs" / "lab.db")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_plain_path_and_sqlite_url_open_the_same_file(tmp_path):
    path = tmp_path / "nested" / "dir" / "x.db"  # parent dirs are created
    with Store(str(path)) as a:
        run_id = a.create_run("lr: 1.0", name="via path")
    assert path.exists()
    with Store(f"sqlite:///{path}") as b:
        assert b.get_run(run_id).name == "via path"
    # and the file is a plain SQLite database another client can read
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM runs WHERE id = ?", (run_id,)).fetchone() == ("via path",)
    con.close()


def test_in_memory_store_works_on_one_thread():
    with Store(":memory:") as s:
        run_id = s.create_run("a: 1")
        s.log_metrics(run_id, 0, {"a": 1.0})
        assert s.metrics(run_id)["value"].tolist() == [1.0]


def test_default_location_comes_from_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("RLAIF_LAB_DB", str(tmp_path / "env.db"))
    assert resolve_url() == f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.delenv("RLAIF_LAB_DB")
    monkeypatch.chdir(tmp_path)
    assert resolve_url() == f"sqlite:///{tmp_path / 'runs' / 'rlaif_lab.db'}"


def test_run_round_trip(store):
    run_id = store.create_run("seed: 1\n", name="first", method="grpo", total_steps=10)
    assert run_id.startswith("r-") and len(run_id) == len("r-20261125-1a2b3c")
    run = store.get_run(run_id)
    assert (run.name, run.method, run.status, run.config_yaml) == ("first", "grpo", "queued", "seed: 1\n")
    assert (run.step, run.total_steps, run.cancel_requested, run.summary) == (0, 10, False, None)
    assert run.created_at.tzinfo == timezone.utc and run.started_at is None
    assert run.is_active

    store.set_progress(run_id, 3, total_steps=12)
    store.set_summary(run_id, {"before": {"mean": 0.4}, "after": {"mean": 0.3}})
    store.request_cancel(run_id)
    run = store.get_run(run_id)
    assert (run.step, run.total_steps) == (3, 12)
    assert run.summary == {"before": {"mean": 0.4}, "after": {"mean": 0.3}}
    assert run.cancel_requested and store.is_cancel_requested(run_id)

    # default name is the id, default method ppo
    other = store.create_run("")
    assert store.get_run(other).name == other and store.get_run(other).method == "ppo"


def test_list_runs_newest_first_and_by_status(store):
    ids = [store.create_run(f"i: {i}") for i in range(3)]
    assert [r.id for r in store.list_runs()] == ids[::-1]
    store.set_status(ids[0], "running")
    assert [r.id for r in store.list_runs("running")] == [ids[0]]
    assert [r.id for r in store.list_runs("queued")] == ids[:0:-1]
    with pytest.raises(ValueError, match="status"):
        store.list_runs("nope")


def test_status_transitions(store):
    run_id = store.create_run("x: 1")
    store.set_status(run_id, "running", device="cpu")
    run = store.get_run(run_id)
    assert run.status == "running" and run.started_at is not None and run.finished_at is None
    assert run.device == "cpu"
    assert run.owner == store.owner and run.heartbeat_at is not None
    with Store(store.url) as other, pytest.raises(ValueError, match="running in another process"):
        other.set_status(run_id, "running")  # a second process cannot start the same run
    store.set_status(run_id, "running")  # its owner setting it again (claimed, then the runner) changes nothing
    assert store.get_run(run_id).started_at == run.started_at

    store.set_status(run_id, "failed", error="boom\n  on two lines", traceback="Traceback...\nX: boom")
    run = store.get_run(run_id)
    assert run.status == "failed" and run.finished_at >= run.started_at
    assert run.error == "boom on two lines" and run.traceback == "Traceback...\nX: boom"
    assert not run.is_active and run.duration_s is not None and run.duration_s >= 0

    with pytest.raises(ValueError, match="illegal status transition 'failed' -> 'running'"):
        store.set_status(run_id, "running")
    queued = store.create_run("x: 2")
    with pytest.raises(ValueError, match="'queued' -> 'completed'"):
        store.set_status(queued, "completed")
    with pytest.raises(ValueError, match="status must be one of"):
        store.set_status(queued, "done")
    assert store.get_run(queued).status == "queued"  # rejected moves change nothing
    store.set_status(queued, "cancelled")
    assert store.get_run(queued).finished_at is not None


def test_unknown_run_id_raises_key_error(store):
    for call in (
        lambda: store.get_run("r-nope"),
        lambda: store.set_status("r-nope", "running"),
        lambda: store.set_progress("r-nope", 1),
        lambda: store.request_cancel("r-nope"),
        lambda: store.is_cancel_requested("r-nope"),
        lambda: store.log_metrics("r-nope", 0, {"a": 1.0}),
        lambda: store.metrics("r-nope"),
        lambda: store.add_samples("r-nope", 0, []),
        lambda: store.checkpoints("r-nope"),
        lambda: store.delete_run("r-nope"),
    ):
        with pytest.raises(KeyError, match="r-nope"):
            call()


def test_metrics_round_trip_long_and_wide(store):
    run_id = store.create_run("")
    store.log_metrics(run_id, 0, {"loss": 2.0, "kl": 0.0}, time=100.0)
    store.log_metrics(run_id, 1, {"loss": 1.5, "kl": float("nan"), "reward": float("inf")}, time=101.5)
    df = store.metrics(run_id)
    assert list(df.columns) == ["id", "step", "key", "value", "time"]
    assert df["id"].is_monotonic_increasing and len(df) == 5
    assert df[["step", "key"]].values.tolist() == [[0, "loss"], [0, "kl"], [1, "loss"], [1, "kl"], [1, "reward"]]
    assert df["time"].tolist() == [100.0, 100.0, 101.5, 101.5, 101.5]
    values = df["value"].tolist()
    assert values[:3] == [2.0, 0.0, 1.5] and math.isnan(values[3]) and math.isnan(values[4])  # NULL
    # NaN/inf really are NULL in the database
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM metrics WHERE value IS NULL").scalar() == 2

    assert store.metric_keys(run_id) == ["kl", "loss", "reward"]
    assert store.metrics(run_id, keys=["loss"])["value"].tolist() == [2.0, 1.5]
    assert store.latest_step(run_id) == 1

    wide = store.metrics_wide(run_id)
    assert wide.index.name == "step" and wide.index.tolist() == [0, 1]
    assert sorted(wide.columns) == ["kl", "loss", "reward"]
    assert wide.loc[1, "loss"] == 1.5 and math.isnan(wide.loc[1, "kl"]) and math.isnan(wide.loc[0, "reward"])
    assert list(store.metrics_wide(run_id, keys=["loss", "kl"]).columns) == ["loss", "kl"]

    before = time.time()
    store.log_metrics(run_id, 2, {"loss": 1.0})  # time defaults to now
    assert before <= store.metrics(run_id, keys=["loss"])["time"].iloc[-1] <= time.time()

    empty = store.create_run("")
    assert store.metrics(empty).empty and store.metrics_wide(empty).empty
    assert store.latest_step(empty) is None and store.metric_keys(empty) == []


def test_metrics_reject_bad_input(store):
    run_id = store.create_run("")
    with pytest.raises(ValueError, match="metrics\\['loss'\\]"):
        store.log_metrics(run_id, 0, {"loss": "high"})
    with pytest.raises(ValueError, match="step"):
        store.log_metrics(run_id, -1, {"loss": 1.0})
    assert store.metrics(run_id).empty  # nothing half-written


def test_incremental_metrics_since_id(store):
    run_id = store.create_run("")
    other = store.create_run("")
    store.log_metrics(run_id, 0, {"a": 0.0, "b": 0.5})
    first = store.metrics(run_id)
    last_id = int(first["id"].max())
    store.log_metrics(other, 0, {"a": 9.0})  # another run's rows never leak in
    store.log_metrics(run_id, 1, {"a": 1.0, "b": 1.5})
    new = store.metrics(run_id, since_id=last_id)
    assert new["step"].tolist() == [1, 1] and (new["id"] > last_id).all()
    assert store.metrics(run_id, since_id=int(new["id"].max())).empty


def test_samples_round_trip(store):
    run_id = store.create_run("")
    store.add_samples(
        run_id,
        0,
        [
            {"prompt": "p0", "response": "r0", "reward": 1.0, "scores": {"tox": 0.1}},
            {"prompt": "p1", "response": "r1", "reward": -2.0, "scores": {"tox": 0.9}},
        ],
    )
    store.add_samples(run_id, 1, [{"prompt": "p2", "response": "r2", "reward": 0.5}])
    df = store.samples(run_id)
    assert list(df.columns) == ["id", "step", "idx", "prompt", "response", "reward", "scores"]
    assert df[["step", "idx", "prompt", "response", "reward"]].values.tolist() == [
        [0, 0, "p0", "r0", 1.0],
        [0, 1, "p1", "r1", -2.0],
        [1, 0, "p2", "r2", 0.5],
    ]
    assert df["scores"].tolist() == [{"tox": 0.1}, {"tox": 0.9}, {}]
    assert store.samples(run_id, last_n=2)["prompt"].tolist() == ["p1", "p2"]
    with pytest.raises(ValueError, match="rows\\[0\\] has no 'response'"):
        store.add_samples(run_id, 2, [{"prompt": "p"}])


def test_evaluations_round_trip(store):
    run_id = store.create_run("")
    store.add_evaluations(run_id, "after", [{"idx": 0, "prompt": "p", "response": "nice", "toxicity": 0.1}])
    store.add_evaluations(
        run_id,
        "before",
        [
            {"idx": 1, "prompt": "q", "response": "mean", "toxicity": 0.8, "scores": {"judge": -4}},
            {"idx": 0, "prompt": "p", "response": "meh", "toxicity": 0.5, "scores": {"judge": 1}},
        ],
    )
    df = store.evaluations(run_id)
    assert df[["phase", "idx", "response", "toxicity"]].values.tolist() == [
        ["before", 0, "meh", 0.5],
        ["before", 1, "mean", 0.8],
        ["after", 0, "nice", 0.1],
    ]
    assert df["scores"].tolist() == [{"judge": 1}, {"judge": -4}, {}]
    assert store.evaluations(run_id, phase="after")["response"].tolist() == ["nice"]
    with pytest.raises(ValueError, match="phase"):
        store.add_evaluations(run_id, "during", [])


def test_checkpoints_round_trip(store):
    run_id = store.create_run("")
    store.add_checkpoint(run_id, 20, "/ckpt/20")
    store.add_checkpoint(run_id, 10, "/ckpt/10")
    cps = store.checkpoints(run_id)
    assert [(c.step, c.path) for c in cps] == [(10, "/ckpt/10"), (20, "/ckpt/20")]
    assert all(c.created_at.tzinfo == timezone.utc for c in cps)


def test_delete_run_cascades(store):
    run_id, keep = store.create_run(""), store.create_run("")
    for rid in (run_id, keep):
        store.log_metrics(rid, 0, {"a": 1.0})
        store.add_samples(rid, 0, [{"prompt": "p", "response": "r", "reward": 0.0}])
        store.add_evaluations(rid, "before", [{"prompt": "p", "response": "r", "toxicity": 0.2}])
        store.add_checkpoint(rid, 0, "/c")
    store.delete_run(run_id)
    with pytest.raises(KeyError):
        store.get_run(run_id)
    with store.engine.connect() as conn:
        for table in ("metrics", "samples", "evaluations", "checkpoints"):
            rows = conn.exec_driver_sql(f"SELECT run_id FROM {table}").scalars().all()
            assert rows == [keep], table
    assert len(store.metrics(keep)) == 1


def test_delete_running_run_is_refused(store):
    run_id = store.create_run("")
    store.set_status(run_id, "running")
    with pytest.raises(ValueError, match="cancel it"):
        store.delete_run(run_id)


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "two-stores"])
def test_concurrent_writer_and_reader(store_url, shared):
    """A writer thread logs 200 steps while a reader polls incrementally; nothing is lost or locked."""
    path = store_url
    writer_store = Store(path)
    reader_store = writer_store if shared else Store(path)
    run_id = writer_store.create_run("")
    n_steps, keys = 200, ("loss", "reward", "kl")
    errors: list[BaseException] = []
    done = threading.Event()
    seen_ids: list[int] = []
    counts: list[int] = []
    reader_saw_some = threading.Event()  # the writer waits for it half-way, so the test needs no lucky timing

    def write():
        try:
            writer_store.set_status(run_id, "running")
            for step in range(n_steps):
                writer_store.log_metrics(run_id, step, {k: float(step) for k in keys})
                writer_store.set_progress(run_id, step + 1, total_steps=n_steps)
                if step % 50 == 0:
                    writer_store.add_samples(run_id, step, [{"prompt": "p", "response": "r", "reward": 1.0}])
                if step == n_steps // 2:
                    reader_saw_some.wait(60)
            writer_store.set_status(run_id, "completed")
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)
        finally:
            done.set()

    def read():
        try:
            last_id = None
            while True:
                finished = done.is_set()  # read once more after the writer is done
                new = reader_store.metrics(run_id, since_id=last_id)
                seen_ids.extend(new["id"].tolist())
                if len(new):
                    last_id = int(new["id"].max())
                    # every step arrives whole: one transaction per step
                    assert (new.groupby("step").size() == len(keys)).all()
                counts.append(len(seen_ids))
                if seen_ids:
                    reader_saw_some.set()
                reader_store.get_run(run_id)
                if finished:
                    return
                time.sleep(0.001)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert seen_ids == sorted(seen_ids) and len(set(seen_ids)) == len(seen_ids)
    assert counts == sorted(counts)
    assert any(0 < c < n_steps * len(keys) for c in counts)  # polled while data grew (the writer waited for it)
    assert len(seen_ids) == n_steps * len(keys)
    assert len(reader_store.metrics(run_id)) == n_steps * len(keys)
    run = reader_store.get_run(run_id)
    assert run.status == "completed" and run.step == n_steps
    writer_store.close()
    reader_store.close()


def test_two_writer_processes_wait_instead_of_failing(store_url):
    """Two stores (as two processes would) writing at once: SQLite's busy timeout serialises them; PostgreSQL's
    row locks let them both write."""
    path = store_url
    stores = [Store(path), Store(path)]
    run_ids = [s.create_run("") for s in stores]
    errors: list[BaseException] = []

    def write(s, run_id):
        try:
            for step in range(100):
                s.log_metrics(run_id, step, {"a": 1.0, "b": 2.0})
                s.set_progress(run_id, step)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(s, r)) for s, r in zip(stores, run_ids, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert [len(stores[0].metrics(r)) for r in run_ids] == [200, 200]
    for s in stores:
        s.close()


def test_no_class_in_engine_defines_a_method_twice():
    """A merge can leave two definitions of one method (the later silently wins): refuse that anywhere in engine/.

    The parse runs in a fresh interpreter: CPython 3.11.7's `ast` keeps a process-wide recursion counter that
    other threads of this test process (store heartbeats, Ray, torch) can leave unbalanced, which CI once met as
    "SystemError: AST constructor recursion depth mismatch" (fixed in later 3.11 releases).
    """
    import subprocess
    import sys
    from pathlib import Path

    check = r'''
import ast, sys
from pathlib import Path
twice = []
for path in sorted(Path(sys.argv[1]).rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.ClassDef, ast.Module)):
            names = [n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and not any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter")
                                 or getattr(d, "id", "") == "overload" for d in n.decorator_list)]
            twice += [f"{path.name}:{getattr(node, 'name', '<module>')}.{n}" for n in set(names)
                      if names.count(n) > 1]
print("\\n".join(twice))
'''
    engine = Path(__file__).resolve().parents[1] / "engine"
    out = subprocess.run([sys.executable, "-c", check, str(engine)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_nul_characters_in_generated_text_are_stored(store):
    """A model may generate NUL; PostgreSQL refuses it in text, so there it is stored as U+FFFD. SQLite keeps it."""
    run_id = store.create_run("", name="a\x00b")
    store.add_samples(run_id, 0, [{"prompt": "p\x00", "response": "r\x00r", "reward": 1.0}])
    store.add_evaluations(run_id, "before", [{"prompt": "p", "response": "\x00"}])
    nul = "\ufffd" if store.engine.dialect.name == "postgresql" else "\x00"
    assert store.samples(run_id)[["prompt", "response"]].values.tolist() == [[f"p{nul}", f"r{nul}r"]]
    assert store.evaluations(run_id)["response"].tolist() == [nul]
    assert store.get_run(run_id).name == f"a{nul}b"
