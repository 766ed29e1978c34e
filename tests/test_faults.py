"""The fault table rows the other process tests do not cover, tried for real: the store made unwritable under a
training worker (its disk filled), and a full disk while checkpointing (a small tmpfs).

Both need mount(8) (root, or a container that allows it); they are skipped, saying so, where mounting is refused.
docs/workers.md has the whole table and what each row showed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from engine.runner import resume_problem
from engine.store import Store
from engine.worker import submit, wait
from tests.test_worker_process import LEASE_S, env, log_of, procs, tiny_config, wait_for  # noqa: F401 (fixtures)


def mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def db_disk(tmp_path):
    """A small tmpfs for the database."""
    path = tmp_path / "dbdisk"
    path.mkdir()
    if shutil.which("mount") is None or mount("-t", "tmpfs", "-o", "size=20m", "tmpfs", str(path)).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN)")
    yield path
    umount(path)


def test_store_unwritable_mid_run_ends_interrupted_after_the_lease_with_one_clear_error(
        db_disk, procs, tmp_path, tiny_gpt2_dir):  # noqa: F811
    """The database's disk fills under a training worker (what a read-only database does too: every write fails;
    a read-only remount is refused while the worker holds the file open, see docs/workers.md)."""
    db = db_disk / "lab.db"
    store = Store(db, lease_s=LEASE_S)
    cfg = tiny_config(tiny_gpt2_dir, steps=100_000, name="unwritable-store")
    cfg.output_dir = str(tmp_path / "out")  # checkpoints on another disk: only the database fails
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 2, 2
    run_id = submit(store, cfg)
    worker = procs("worker", "--db", store.url, "--poll-s", "0.2", name="worker")
    assert wait_for(lambda: store.get_run(run_id).step >= 3, timeout=300), log_of(tmp_path, "worker")

    filler = db_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the database's disk to the last byte (unbuffered: the
        try:                                    # failing write is this one, not a flush when the file closes)
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    # The worker's next write fails; so does recording the run as failed: the worker says so, once.
    assert wait_for(lambda: "could not record it as failed" in (tmp_path / "worker.log").read_text(errors="replace"),
                    timeout=300), log_of(tmp_path, "worker")
    assert worker.poll() is None  # the worker lives on, retrying the store
    filler.unlink()  # room again
    # Its heartbeats would keep a run it still held "running" forever; it let go of it, so the lease expires and
    # whichever process looks next (here: this one) marks it interrupted.
    assert wait_for(lambda: store.expire_leases() == [run_id] or store.get_run(run_id).status == "interrupted",
                    timeout=120)
    r = store.get_run(run_id)
    assert r.status == "interrupted" and "sent no heartbeat for" in r.error, r.error
    assert resume_problem(store, run_id) is None  # its checkpoints (on another disk) are intact: Resume
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "During handling of the above exception, another exception occurred" not in log  # no double traceback
    assert log.count("could not record it as failed") == 1
    assert log.count("heartbeat to") <= 1  # one warning for the outage, not one per heartbeat

    worker.send_signal(signal.SIGTERM)  # and it still serves, and stops cleanly
    assert worker.wait(120) == 0, log_of(tmp_path, "worker")
    store.close()


@pytest.fixture
def small_disk(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    if shutil.which("mount") is None or mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(path)).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN)")
    yield path
    umount(path)


def test_full_disk_while_checkpointing_fails_the_run_with_the_previous_checkpoint_intact(
        small_disk, procs, tmp_path, tiny_gpt2_dir):  # noqa: F811
    store = Store(tmp_path / "lab.db", lease_s=LEASE_S)
    cfg = tiny_config(tiny_gpt2_dir, steps=40, name="full-disk")
    cfg.output_dir = str(small_disk)  # the checkpoints go to a 3 MiB disk: the first fits, a later one does not
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 2, 2
    filler = small_disk / "filler"
    run_id = submit(store, cfg)
    worker = procs("worker", "--db", store.url, "--poll-s", "0.2", "--once", name="worker")
    assert wait_for(lambda: any(c.step >= 2 for c in store.checkpoints(run_id)), timeout=300), \
        log_of(tmp_path, "worker")
    # fill the disk but leave less than a checkpoint free
    ckpt_size = sum(f.stat().st_size for f in Path(store.checkpoints(run_id)[0].path).rglob("*") if f.is_file())
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(free - ckpt_size // 2, 0))
    assert wait(store, run_id, timeout=300) == "failed", log_of(tmp_path, "worker")
    assert worker.wait(120) == 0
    r = store.get_run(run_id)
    assert "CheckpointError" in r.error and "MiB free there" in r.error and "is intact" in r.error, r.error
    assert f"python -m engine resume {run_id}" in r.error
    kept = store.checkpoints(run_id)
    assert kept and resume_problem(store, run_id) is None  # the last complete checkpoint is there to resume from
    ckpt_dir = small_disk / run_id / "checkpoints"
    assert not [p for p in ckpt_dir.iterdir() if ".partial-" in p.name]  # no half-written checkpoint left
    # steps lost: only those after the last complete checkpoint
    assert r.step - kept[-1].step <= cfg.checkpoint.every_steps

    filler.unlink()  # room again: the run resumes from that checkpoint and completes
    resumed = subprocess.run([os.sys.executable, "-m", "engine", "--db", store.url, "resume", run_id],
                             cwd=tmp_path, env=env_for_child(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert store.get_run(run_id).status == "completed"
    assert sorted(store.metrics_wide(run_id).index) == list(range(1, 41))
    store.close()


def env_for_child() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "RLAIF_LAB_LEASE_S": str(LEASE_S), "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
