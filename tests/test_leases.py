"""Leases in the store (engine.store): owners, heartbeats, atomic claims, expiry, workers, on both backends (a SQLite
file, a PostgreSQL database). Several Store objects on one store stand for several processes (each Store has its own
owner id and heartbeat thread); the real processes, killed for real, are in tests/test_worker_process.py."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from engine.store import LeaseLost, Run, Store, utcnow
from tests.waiting import wait_for as _wait_for


def wait_for(predicate, timeout: float = 30.0, every: float = 0.02) -> bool:
    return _wait_for(predicate, timeout, every)


@pytest.fixture
def path(store_url):
    """An empty store on each backend (SQLite file, PostgreSQL database)."""
    return store_url


def _age_heartbeat(store: Store, run_id: str, seconds: float) -> None:
    """Make a run's last heartbeat `seconds` old, as if its owner had stopped then."""
    with store.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def test_claims_are_atomic_each_run_once(path):
    """Four 'processes' claim from twenty queued runs at once: each run is claimed exactly once."""
    stores = [Store(path, owner=f"w{i}", lease_s=60) for i in range(4)]
    queued = [stores[0].create_run("", name=f"r{i}") for i in range(20)]
    got: dict[str, list[str]] = {s.owner: [] for s in stores}
    start = threading.Barrier(len(stores))

    def claim_all(store: Store) -> None:
        start.wait()
        while (record := store.claim_run()) is not None:
            got[store.owner].append(record.id)
            store.set_status(record.id, "completed")

    threads = [threading.Thread(target=claim_all, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [rid for ids in got.values() for rid in ids]
    assert sorted(claimed) == sorted(queued)  # none twice, none lost
    for store in stores:
        for run_id in got[store.owner]:
            assert store.get_run(run_id).owner == store.owner
        store.close()


def test_claim_order_priority_then_oldest_and_specific_claims(path):
    with Store(path, lease_s=60) as store:
        old = store.create_run("", name="old")
        new = store.create_run("", name="new")
        urgent = store.create_run("", name="urgent", priority=1)
        assert [store.claim_run().id for _ in range(3)] == [urgent, old, new]
        assert store.claim_run() is None
        with pytest.raises(ValueError, match="only a queued run can be claimed"):
            store.claim_run(old)
        with pytest.raises(KeyError):
            store.claim_run("r-nope")
        named = store.create_run("")
        assert store.claim_run(named, device="cpu").device == "cpu"


def test_heartbeat_keeps_a_live_run_and_expiry_marks_only_a_silent_one(path):
    lease = 3.0  # heartbeats every 0.5 s: only a 3 s stall of this process (not load) could expire it
    owner = Store(path, owner="cli-a", lease_s=lease)
    other = Store(path, owner="ui-b", lease_s=lease)
    live = owner.create_run("", name="live")
    owner.claim_run(live)
    first_beat = owner.get_run(live).heartbeat_at
    assert wait_for(lambda: other.get_run(live).heartbeat_at > first_beat)  # the thread heartbeats
    deadline = time.monotonic() + 2 * lease  # well past the lease: still alive, because it heartbeats
    while time.monotonic() < deadline:
        assert other.expire_leases() == []
        time.sleep(lease / 4)
    assert other.get_run(live).status == "running"

    # a run whose owner went silent (its heartbeat is older than the lease) is marked interrupted by anyone
    dead = other.create_run("", name="dead", total_steps=10)
    with other.engine.begin() as conn:
        conn.execute(update(Run).where(Run.id == dead).values(
            status="running", owner="w-gone-1", started_at=utcnow(), step=4,
            heartbeat_at=utcnow() - timedelta(seconds=lease * 0.5)))
    assert other.expire_leases() == []  # not yet: within the lease
    _age_heartbeat(other, dead, lease * 2)
    assert other.expire_leases() == [dead]
    r = other.get_run(dead)
    assert r.status == "interrupted" and r.finished_at is not None and r.phase == "interrupted"
    assert f"w-gone-1 sent no heartbeat for {lease * 2:.0f} s (lease {lease:.0f} s)" in r.error and "at step 4" in r.error
    assert other.expire_leases() == [] and owner.get_run(live).status == "running"
    owner.set_status(live, "completed")
    owner.close()
    other.close()


def test_a_run_from_before_leases_expires_from_its_start(path):
    with Store(path, lease_s=5) as store:
        legacy = store.create_run("")
        with store.engine.begin() as conn:  # as the v0 store left it: running, no owner, no heartbeat
            conn.execute(update(Run).where(Run.id == legacy).values(status="running",
                                                                     started_at=utcnow() - timedelta(seconds=60)))
        assert store.expire_leases() == [legacy]


def test_only_the_owner_ends_a_running_run_and_cancel_goes_through_the_flag(path):
    with Store(path, owner="cli-1", lease_s=60) as owner, Store(path, owner="ui-2", lease_s=60) as ui:
        run_id = owner.create_run("")
        owner.claim_run(run_id)
        for status in ("completed", "failed", "cancelled", "interrupted"):
            with pytest.raises(ValueError, match=r"running in another process \(cli-1\)"):
                ui.set_status(run_id, status)
        ui.request_cancel(run_id)
        assert owner.is_cancel_requested(run_id)
        owner.set_status(run_id, "cancelled", error="cancelled by the user")
        assert ui.get_run(run_id).status == "cancelled"
        assert owner.owned_runs() == []


def test_a_stop_the_user_did_not_ask_for_ends_interrupted(path):
    with Store(path, lease_s=60) as store:
        run_id = store.create_run("")
        store.claim_run(run_id)
        store.request_cancel(run_id, reason="worker w-1 received SIGTERM: stopped at step 3")
        store.set_status(run_id, "cancelled", error="cancelled by the user")  # what the runner says
        r = store.get_run(run_id)
        assert (r.status, r.error) == ("interrupted", "worker w-1 received SIGTERM: stopped at step 3")


def test_progress_goes_out_with_the_heartbeat(path):
    with Store(path, lease_s=60) as owner, Store(path, lease_s=60) as reader:
        run_id = owner.create_run("", total_steps=5)
        owner.claim_run(run_id)
        owner.note_progress(run_id, "load", "loading the policy")  # a new phase is written at once
        assert wait_for(lambda: reader.get_run(run_id).phase == "load")
        assert reader.get_run(run_id).message == "loading the policy"
        for t in (1.5, 2.5):
            owner.note_progress(run_id, "train", "step", step_time=t)
        owner.beat()
        r = reader.get_run(run_id)
        assert (r.phase, r.step_times) == ("train", (1.5, 2.5))
        owner.note_progress("r-not-mine", "train")  # ignored: not a run this store executes


def test_lost_lease_stops_the_run_and_refuses_its_status(path):
    with Store(path, owner="slow", lease_s=60) as slow, Store(path, owner="judge", lease_s=60) as judge:
        run_id = slow.create_run("")
        slow.claim_run(run_id)

        def frozen_then_expired() -> bool:  # as if the slow process had been frozen for two minutes
            _age_heartbeat(judge, run_id, 120)  # (again, should its heartbeat thread have written meanwhile)
            return judge.expire_leases() == [run_id]

        assert wait_for(frozen_then_expired)
        slow.beat()  # its next heartbeat finds the run no longer its own
        assert slow.lease_lost(run_id) and slow.is_cancel_requested(run_id) and slow.owned_runs() == []
        with pytest.raises(LeaseLost, match="lost its lease"):
            slow.set_status(run_id, "completed")
        assert judge.get_run(run_id).status == "interrupted"


def _beat_held_before_its_write(store: Store) -> tuple[threading.Thread, threading.Event]:
    """Start a heartbeat that has read the Store's state and is held just before it writes; set the event to let it."""
    entered, release = threading.Event(), threading.Event()
    beat_thread: list[threading.Thread] = []
    plain_write = store._write

    def held_write():
        if threading.current_thread() in beat_thread:
            entered.set()
            release.wait(60)
        return plain_write()

    store._write = held_write
    beat_thread.append(threading.Thread(target=store.beat))
    beat_thread[0].start()
    assert entered.wait(60)
    return beat_thread[0], release


def _call_beside_the_held_beat(fn, release: threading.Event) -> None:
    """Call `fn` while the beat is held; if it waits for that beat (the fix), let the beat finish."""
    caller = threading.Thread(target=fn)
    caller.start()
    caller.join(1.0)
    if caller.is_alive():
        release.set()
        caller.join(60)


def test_no_heartbeat_lands_after_abandon_returns(path):
    """A heartbeat that read the owned runs before `abandon` must not write after it: abandon waits for it. (CI once
    saw a late-heartbeat check undone by a beat in flight on a loaded machine.)"""
    store = Store(path, owner="w", lease_s=600)
    release = threading.Event()
    try:
        run_id = store.create_run("", name="r")
        store.claim_run(run_id)
        beat, release = _beat_held_before_its_write(store)
        _call_beside_the_held_beat(lambda: store.abandon(run_id), release)
        _age_heartbeat(store, run_id, 3600)  # after abandon returned: nothing may refresh it any more
        release.set()
        beat.join(60)
        store.beat()
        assert store.get_run(run_id).heartbeat_age_s > 3000
    finally:
        release.set()
        store.close()


def test_no_heartbeat_registers_a_worker_again_after_unregister_returns(path):
    """A heartbeat that read "registered" before `unregister_worker` must not write after it (it would find the row
    gone and add it again: CI once saw a finished Ray task's worker row come back)."""
    store = Store(path, owner="w", lease_s=600)
    release = threading.Event()
    try:
        store.register_worker(device="cpu")
        beat, release = _beat_held_before_its_write(store)
        _call_beside_the_held_beat(store.unregister_worker, release)
        release.set()
        beat.join(60)
        store.beat()
        assert [w.id for w in store.list_workers()] == []
    finally:
        release.set()
        store.close()


def test_workers_register_heartbeat_and_leave(path):
    with Store(path, owner="w-a", lease_s=0.6) as a, Store(path, lease_s=0.6) as ui:
        a.register_worker(device="cpu")
        [w] = ui.list_workers()
        assert (w.id, w.device, w.current_run) == ("w-a", "cpu", None) and w.pid > 0 and w.host
        run_id = ui.create_run("")
        a.claim_run()
        assert wait_for(lambda: ui.list_workers()[0].current_run == run_id)
        first = ui.list_workers()[0].heartbeat_at
        assert wait_for(lambda: ui.list_workers()[0].heartbeat_at > first)
        assert [w.id for w in ui.live_workers()] == ["w-a"]
        a.set_status(run_id, "completed")
        assert wait_for(lambda: ui.list_workers()[0].current_run is None)
        a.unregister_worker()
        assert ui.list_workers() == []


def test_lease_timeout_from_the_environment(monkeypatch, path):
    monkeypatch.setenv("RLAIF_LAB_LEASE_S", "12")
    with Store(path) as store:
        assert store.lease_s == 12 and store.heartbeat_s == 2
    monkeypatch.setenv("RLAIF_LAB_LEASE_S", "soon")
    with pytest.raises(ValueError, match="RLAIF_LAB_LEASE_S must be a number"):
        Store(path)


def test_reopen_takes_the_lease_or_leaves_the_run_to_a_worker(path):
    with Store(path, owner="w-old", lease_s=60) as old, Store(path, owner="cli-resume", lease_s=60) as cli:
        run_id = old.create_run("")
        old.claim_run(run_id)
        old.request_cancel(run_id, reason="the worker received SIGTERM")
        old.set_status(run_id, "cancelled")  # -> interrupted, with the reason
        cli.reopen(run_id)  # `engine resume RUN`: this process owns it now and heartbeats it
        r = cli.get_run(run_id)
        assert (r.status, r.owner, r.error, r.cancel_requested) == ("running", "cli-resume", None, False)
        assert cli.owned_runs() == [run_id] and cli.expire_leases(lease_s=0) == [] and old.expire_leases(60) == []
        cli.request_cancel(run_id)  # a user's cancel now ends it cancelled (the old stop reason is gone)
        cli.set_status(run_id, "cancelled")
        assert cli.get_run(run_id).status == "cancelled"
        cli.reopen(run_id, to="queued")  # the Resume button: a worker takes it
        r = cli.get_run(run_id)
        assert (r.status, r.owner, r.heartbeat_at) == ("queued", None, None)
        assert old.claim_run().id == run_id and old.get_run(run_id).owner == "w-old"
        with pytest.raises(ValueError, match="only a failed, cancelled or interrupted run"):
            cli.reopen(run_id)


def test_postgresql_claims_skip_the_run_another_claimer_holds(pg_url):
    """On PostgreSQL a claim locks the queue's head with FOR UPDATE SKIP LOCKED: while another claimer holds the
    head row, a claim takes the next run at once instead of waiting for (and then losing) that row."""
    from sqlalchemy import create_engine, select

    with Store(pg_url, owner="w-a", lease_s=60) as store:
        first = store.create_run("", name="first")
        second = store.create_run("", name="second")
        other = create_engine(pg_url)
        got: list = []
        claimer = threading.Thread(target=lambda: got.append(store.claim_run()), daemon=True)
        with other.connect() as conn:
            held = conn.begin()  # another worker, in the middle of claiming `first`
            conn.execute(select(Run.id).where(Run.id == first).with_for_update())
            try:
                claimer.start()
                claimer.join(60)
                blocked = claimer.is_alive()
            finally:
                held.rollback()  # let a blocked claim (the bug) finish, so the test ends either way
        claimer.join(60)
        other.dispose()
        assert not blocked, "the claim waited for the row another claimer held"
        assert [r.id for r in got] == [second]
        assert store.claim_run().id == first  # released: the next claim gets it
