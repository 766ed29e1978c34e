"""The Ray executor against a REAL local Ray cluster (tests/ray_head.py: `ray start --head` on 127.0.0.1, 2 CPUs, no
GPU), nothing mocked: a dispatcher PROCESS (`python -m engine worker --ray-address ...`) claims runs from a SQLite
store and sends each to Ray as a task; the task executes it with the local worker's code and writes the store.

Shown: a tiny run sent through the backend completes with its metrics in the store (each step once, owned by the
Ray task); a running Ray run is cancelled through the store's flag, resumed from its checkpoint through the queue;
a Ray task's process SIGKILLed leaves its run running until the lease expires, then interrupted; the Launch page's
numbers (nodes, free CPUs); a run asking for more GPUs / CPUs / memory than any node has is refused by field before
anything is queued; an unreachable or misspelt address is refused before anything is queued, by the lab and by the
dispatcher, and nothing stored is lost. Plus the local executor: more GPUs than this machine has is refused.
Waits are on conditions with generous timeouts; nothing asserts a duration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.api import Lab
from engine.config import ConfigError, RunConfig, validate
from engine.ray_cluster import ClusterInfo, Executor, NodeInfo, RayUnavailable, parse_address
from engine.resources import cluster_problems, local_gpu_count, local_problems, ray_options
from engine.store import Store
from engine.worker import submit
from tests import ray_head
from tests.test_many_workers import tiny_config  # the same tiny run as the local workers' tests
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
LEASE_S = 30.0  # the default: 10 s lost live leases when the 2-core machine ran at a load of 10-13


def snapshot(store: Store) -> list[tuple]:
    """Every run's id, status, step and error, and its metric rows: what must not change when a start is refused."""
    return [(r.id, r.status, r.step, r.error, len(store.metrics(r.id))) for r in store.list_runs()]


def dead_address() -> str:
    return f"127.0.0.1:{ray_head.free_port()}"  # nothing listens there


# ---- without a cluster -----------------------------------------------------------------------------


def test_the_executor_comes_from_the_environment():
    assert Executor.from_env({}) == Executor("local")
    assert Executor.from_env({"RAY_ADDRESS": "10.0.0.5:6379"}) == Executor("ray", "10.0.0.5:6379")
    assert Executor.from_env({"RAY_ADDRESS": "10.0.0.5:6379", "RLAIF_LAB_EXECUTOR": "local"}) == Executor("local")
    with pytest.raises(RayUnavailable, match="RAY_ADDRESS is not set"):
        Executor.from_env({"RLAIF_LAB_EXECUTOR": "ray"})
    with pytest.raises(RayUnavailable, match="must be one of local, ray, got 'slurm'"):
        Executor.from_env({"RLAIF_LAB_EXECUTOR": "slurm"})
    assert parse_address("head.example:6379") == ("head.example", 6379)
    for bad, why in [("10.0.0.5", "misspelt"), ("10.0.0.5:", "misspelt"), ("10.0.0.5:99999", "not a TCP port"),
                     ("ray://10.0.0.5:10001", "Ray Client"), ("http://10.0.0.5:6379", "no scheme")]:
        with pytest.raises(RayUnavailable, match=why):
            parse_address(bad)


def test_resources_that_no_node_has_are_refused_by_field():
    nodes = (NodeInfo("a", "10.0.0.1", True, cpus=8, gpus=0, memory_gb=30.0),
             NodeInfo("b", "10.0.0.2", True, cpus=4, gpus=2, memory_gb=60.0),
             NodeInfo("c", "10.0.0.3", False, cpus=64, gpus=8, memory_gb=500.0))  # dead: counts for nothing
    cluster = ClusterInfo("h:1", nodes, free_cpus=12, free_gpus=2, free_memory_gb=90, total={})
    cfg = RunConfig()
    assert cluster_problems(cfg, cluster) == []  # one device: a GPU (the cluster has some), one CPU
    assert ray_options(cfg.resources, cluster.has_gpus) == {"num_gpus": 1, "num_cpus": 1}
    cfg.resources.gpus = 3
    [p] = cluster_problems(cfg, cluster)
    assert p.field == "resources.gpus" and "asks for 3 GPUs; the largest node" in p.message and "has 2" in p.message
    cfg.resources.gpus, cfg.resources.cpus, cfg.resources.memory_gb = 0, 9, 61.0
    assert {p.field for p in cluster_problems(cfg, cluster)} == {"resources.cpus", "resources.memory_gb"}
    cfg.resources.gpus, cfg.resources.cpus, cfg.resources.memory_gb = 1, 8, 10.0  # each fits, never together
    [p] = cluster_problems(cfg, cluster)
    assert p.field == "resources" and "no single node" in p.message
    cfg.resources.cpus = 4
    assert cluster_problems(cfg, cluster) == []
    assert ray_options(cfg.resources, True) == {"num_gpus": 1, "num_cpus": 4, "memory": 10 * 2**30}
    assert local_problems(cfg, gpu_count=1) == []
    cfg.resources.gpus = 2
    [p] = local_problems(cfg, gpu_count=1)
    assert p.field == "resources.gpus" and "this machine has 1" in p.message


def test_resources_are_validated_as_fields():
    cfg = RunConfig()
    cfg.resources.gpus, cfg.resources.cpus, cfg.resources.memory_gb = -1, 0, -2.0
    assert {e.field for e in validate(cfg)} >= {"resources.gpus", "resources.cpus", "resources.memory_gb"}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"resources": {"gpus": "two"}})
    assert err.value.errors[0].field == "resources.gpus"


def test_a_handed_over_run_is_heartbeaten_until_adopted_then_left_quietly(tmp_path, caplog):
    import logging

    url = tmp_path / "lab.db"
    with Store(url, owner="dispatch", lease_s=60) as d, Store(url, owner="task", lease_s=60) as t:
        run_id = d.create_run("", total_steps=1)
        d.claim_run(run_id)
        d.hand_over(run_id)
        assert d.handed_over(run_id) and d.owned_runs() == [run_id]  # its lease stays alive while it waits
        assert t.adopt_run(run_id, from_owner="someone-else") is None  # only from the owner that handed it over
        record = t.adopt_run(run_id, from_owner="dispatch", device="cpu")
        assert (record.owner, record.device, record.status) == ("task", "cpu", "running")
        assert t.owned_runs() == [run_id]
        with caplog.at_level(logging.ERROR, logger="engine.store"):
            d.beat()  # the dispatcher's next heartbeat finds the run adopted: it lets go without complaint
        assert d.owned_runs() == [] and not d.handed_over(run_id) and not d.lease_lost(run_id)
        assert "lease lost" not in caplog.text
        t.set_status(run_id, "completed")
        assert t.adopt_run(run_id, from_owner="task") is None  # a finished run is adopted by nobody


def test_handed_over_confirmed_reads_the_row_not_the_last_heartbeat(tmp_path):
    url = tmp_path / "lab.db"
    with Store(url, owner="dispatch", lease_s=60) as d, Store(url, owner="task", lease_s=60) as t:
        waiting, adopted = d.create_run("", total_steps=1), d.create_run("", total_steps=1)
        for run_id in (waiting, adopted):
            d.claim_run(run_id)
            d.hand_over(run_id)
        with d._beat_write_lock:  # holds off the dispatcher's heartbeats: the adoption stays unseen by them
            t.adopt_run(adopted, from_owner="dispatch")
            assert d.handed_over(adopted)  # no heartbeat since the adoption: the cheap answer is stale ...
            assert not d.handed_over(adopted, confirm=True)  # ... the row says another process owns it: let go
            assert not d.handed_over(adopted) and d.owned_runs() == [waiting] and not d.lease_lost(adopted)
        assert d.handed_over(waiting, confirm=True) and d.handed_over(waiting)  # still ours: still heartbeated


def test_a_task_that_adopted_its_run_and_died_before_the_next_heartbeat_is_reported_as_ended_abnormally(
        tmp_path, caplog):
    """The dispatcher's account of a dead Ray task (no cluster needed: the task's end is handed in as Ray hands
    it): one that adopted its run leaves it running for the lease to expire; one that never did fails its run."""
    import logging

    from engine.ray_dispatcher import RayDispatcher

    url = tmp_path / "lab.db"
    dispatcher = RayDispatcher(url, address="127.0.0.1:6379", lease_s=60)
    try:
        d = dispatcher.store
        started, never = d.create_run("", total_steps=1), d.create_run("", total_steps=1)
        for run_id in (started, never):
            d.claim_run(run_id)
            d.hand_over(run_id)
        with Store(url, owner="ray-task", lease_s=60) as t, d._beat_write_lock:  # (no dispatcher heartbeat)
            t.adopt_run(started, from_owner=d.owner)  # adopted, then its process dies before d's next heartbeat
            assert d.handed_over(started)  # what the dispatcher's heartbeats last saw
            with caplog.at_level(logging.WARNING, logger="engine.ray_dispatcher"):
                dispatcher._task_failed(started, RuntimeError("The worker died unexpectedly"))
                dispatcher._task_failed(never, RuntimeError("could not place the task"))
            record = d.get_run(started)
            assert (record.status, record.owner, record.error) == ("running", "ray-task", None)
            assert f"run {started}: its Ray task ended abnormally (RuntimeError: The worker died" in caplog.text
            assert f"run {started}: its Ray task could not start it" not in caplog.text
            record = d.get_run(never)
            assert record.status == "failed"
            assert record.error == "the Ray task could not start the run: RuntimeError: could not place the task"
            t.abandon(started)
    finally:
        dispatcher.store.close()


def test_a_local_run_asking_for_more_gpus_than_this_machine_has_is_refused_before_it_is_queued(tmp_path,
                                                                                               tiny_gpt2_dir):
    store = Store(tmp_path / "lab.db")
    kept = submit(store, tiny_config(tiny_gpt2_dir, 1, "already queued"))
    lab = Lab(store, executor=Executor("local"))
    cfg = tiny_config(tiny_gpt2_dir, 1, "too many gpus")
    cfg.resources.gpus = local_gpu_count() + 1
    before = snapshot(store)
    with pytest.raises(ConfigError) as err:
        lab.start_run(cfg)
    assert [e.field for e in err.value.errors] == ["resources.gpus"]
    assert f"this machine has {local_gpu_count()}" in err.value.errors[0].message
    assert snapshot(store) == before and store.get_run(kept).status == "queued"
    cfg.resources.gpus = local_gpu_count()  # as many as there are: queued
    assert store.get_run(lab.start_run(cfg)).status == "queued"
    store.close()


def test_an_unreachable_or_misspelt_ray_address_is_refused_before_anything_is_queued(tmp_path, tiny_gpt2_dir):
    store = Store(tmp_path / "lab.db")
    queued = submit(store, tiny_config(tiny_gpt2_dir, 1, "already queued"))
    done = submit(store, tiny_config(tiny_gpt2_dir, 1, "already stored"))
    store.claim_run(done)
    store.log_metrics(done, 1, {"loss": 0.5})
    store.set_status(done, "completed")
    before = snapshot(store)
    address = dead_address()
    cases = [(address, f"nothing answers at {address}"), ("127.0.0.1", "misspelt"),
             ("no-such-host.invalid:6379", "does not resolve")]
    for addr, why in cases:
        lab = Lab(store, executor=Executor("ray", addr))
        with pytest.raises(RayUnavailable, match=why):
            lab.start_run(tiny_config(tiny_gpt2_dir, 1, "refused"))
        with pytest.raises(RayUnavailable, match=why):
            lab.cluster()  # what the Launch page shows instead of the free resources
        assert snapshot(store) == before
    # the dispatcher refuses to start on it before it claims anything: exit 2, one error line
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLAIF_LAB_DB": str(tmp_path / "lab.db")}
    out = subprocess.run([sys.executable, "-m", "engine", "worker", "--ray-address", address, "--once"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: the Ray cluster at {address} cannot be reached")
    assert snapshot(store) == before and store.get_run(queued).status == "queued"
    assert store.list_workers() == []
    store.close()


# ---- against a real head -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head():
    h = ray_head.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def ray_store(head, tmp_path_factory):
    """A SQLite store and a dispatcher process serving it on the head (killed at the end)."""
    directory = tmp_path_factory.mktemp("ray_lab")
    url = str(directory / "lab.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLAIF_LAB_DB": url, "RLAIF_LAB_LEASE_S": str(LEASE_S),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = open(directory / "dispatcher.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "-v", "worker", "--ray-address", head.address,
                             "--poll-s", "0.2"], cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    store = Store(url, lease_s=LEASE_S)
    lab = Lab(store, executor=Executor("ray", head.address))
    state = {"lab": lab, "store": store, "proc": proc, "log": directory / "dispatcher.log", "dir": directory}
    assert wait_for(lambda: any(w.id.startswith("dispatch-") for w in store.live_workers()), 240), \
        (directory / "dispatcher.log").read_text()[-3000:]
    yield state
    if proc.poll() is None:
        proc.kill()
    proc.wait(60)
    log.close()
    store.close()


def dispatcher_log(state) -> str:
    return Path(state["log"]).read_text(errors="replace")[-4000:]


def test_the_launch_page_numbers_come_from_the_cluster(ray_store, head):
    cluster = ray_store["lab"].cluster(max_age_s=0)
    [node] = cluster.live_nodes
    assert (node.alive, node.cpus, node.gpus) == (True, ray_head.NUM_CPUS, 0) and node.host
    assert cluster.total["CPU"] == ray_head.NUM_CPUS and 0 <= cluster.free_cpus <= ray_head.NUM_CPUS
    assert f"of {ray_head.NUM_CPUS:g} CPUs" in cluster.describe()


def test_more_than_any_node_has_is_refused_before_anything_is_queued(ray_store, tiny_gpt2_dir):
    lab, store = ray_store["lab"], ray_store["store"]
    before = snapshot(store)
    for field, value, says in [("gpus", 1, "asks for 1 GPU; the largest node"), ("cpus", 3, "asks for 3 CPUs"),
                               ("memory_gb", 100_000.0, "asks for 100000 GiB of memory")]:
        cfg = tiny_config(tiny_gpt2_dir, 1, f"too much {field}")
        setattr(cfg.resources, field, value)
        with pytest.raises(ConfigError) as err:
            lab.start_run(cfg)
        assert [e.field for e in err.value.errors] == [f"resources.{field}"]
        assert says in err.value.errors[0].message and head_address(lab) in err.value.errors[0].message
    assert snapshot(store) == before


def head_address(lab: Lab) -> str:
    return lab.executor.address


def test_a_tiny_run_sent_to_ray_completes_with_its_metrics_in_the_store(ray_store, tiny_gpt2_dir):
    lab, store = ray_store["lab"], ray_store["store"]
    run_id = lab.start_run(tiny_config(tiny_gpt2_dir, 2, "on ray"))
    assert wait_for(lambda: store.get_run(run_id).status not in ("queued", "running"), 600, 0.5), \
        dispatcher_log(ray_store)
    record = store.get_run(run_id)
    assert record.status == "completed", (record.error, dispatcher_log(ray_store))
    assert record.owner.startswith("ray-")  # executed by the Ray task, which adopted the dispatcher's lease
    metrics = store.metrics(run_id)
    assert set(metrics["step"]) == {1, 2} and not metrics.duplicated(["step", "key"]).any()  # each step once
    assert f"run {run_id} (on ray) sent to Ray with {{'num_gpus': 0, 'num_cpus': 1}}" in dispatcher_log(ray_store)
    assert wait_for(lambda: f"worker {record.owner}: run {run_id}" in dispatcher_log(ray_store), 60)  # the task's log
    assert wait_for(lambda: not [w for w in store.list_workers() if w.id.startswith("ray-")], 60)  # unregistered


def test_a_running_ray_run_is_cancelled_and_resumed_from_its_checkpoint(ray_store, tiny_gpt2_dir):
    lab, store = ray_store["lab"], ray_store["store"]
    out = ray_store["dir"] / "out"
    run_id = lab.start_run(tiny_config(tiny_gpt2_dir, 100_000, "cancel me", checkpoint_every=1, output_dir=str(out)))

    def training_past(step: int):
        def check() -> bool:
            r = store.get_run(run_id)
            return r.status == "running" and (r.owner or "").startswith("ray-") and r.step >= step
        return check

    assert wait_for(training_past(2), 600, 0.2), dispatcher_log(ray_store)
    first_owner = store.get_run(run_id).owner
    assert lab.cancel_run(run_id) == "running"  # the store's flag; the task's runner stops at its next step
    assert wait_for(lambda: store.get_run(run_id).status == "cancelled", 300, 0.2), dispatcher_log(ray_store)
    record = store.get_run(run_id)
    assert record.error == "cancelled by the user"
    saved = max(c.step for c in store.checkpoints(run_id))  # a cancel saves a checkpoint of the last step
    assert saved == record.step >= 2

    ok, plan = lab.resume_plan(run_id)
    assert ok, plan
    assert lab.resume_run(run_id) == "queued"  # back through the queue: the dispatcher sends it to Ray again
    assert wait_for(lambda: store.get_run(run_id).owner not in (None, first_owner) and training_past(saved + 1)(),
                    600, 0.2), dispatcher_log(ray_store)
    metrics = store.metrics(run_id)
    assert not metrics.duplicated(["step", "key"]).any()  # resumed after the checkpoint, nothing trained twice
    assert set(metrics["step"]) >= set(range(1, saved + 2))
    lab.cancel_run(run_id)
    assert wait_for(lambda: store.get_run(run_id).status == "cancelled", 300, 0.2), dispatcher_log(ray_store)


def test_a_killed_ray_task_leaves_its_run_running_until_the_lease_expires(ray_store, tiny_gpt2_dir):
    lab, store = ray_store["lab"], ray_store["store"]
    run_id = lab.start_run(tiny_config(tiny_gpt2_dir, 100_000, "killed on ray"))

    def task_row():
        r = store.get_run(run_id)
        if r.status != "running" or not (r.owner or "").startswith("ray-") or r.step < 1:
            return None
        return next((w for w in store.live_workers() if w.id == r.owner), None)

    assert wait_for(task_row, 600, 0.2), dispatcher_log(ray_store)
    task = task_row()
    os.kill(task.pid, signal.SIGKILL)  # the process executing the run dies, as with its node
    assert store.get_run(run_id).status == "running"  # nobody touches it before the lease expires ...
    assert wait_for(lambda: store.get_run(run_id).status == "interrupted", 180 + LEASE_S, 0.2), \
        dispatcher_log(ray_store)
    record = store.get_run(run_id)  # ... then any process (here the dispatcher) marks it
    assert record.error.startswith(f"the process running it stopped: {task.id} sent no heartbeat")
    assert wait_for(lambda: "its Ray task ended abnormally" in dispatcher_log(ray_store), 120), \
        dispatcher_log(ray_store)


def test_the_dispatcher_stops_cleanly_on_sigterm(ray_store):
    proc, store = ray_store["proc"], ray_store["store"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(300) == 0, dispatcher_log(ray_store)
    assert not [w for w in store.list_workers() if w.id.startswith("dispatch-")]
    assert "stopped after submitting" in dispatcher_log(ray_store)


# ---- the Launch page -----------------------------------------------------------------------------------


@pytest.fixture
def page_env(tmp_path, monkeypatch, tmp_path_factory):
    """The app on a fresh store of its own (as tests/test_pages_apptest.py's `db`), starting no worker."""
    from streamlit import config as st_config

    monkeypatch.setenv("RLAIF_LAB_DB", str(tmp_path / "page.db"))
    settings = tmp_path / "lab_settings.toml"
    settings.write_text(f'[paths]\nmodels = ["{tmp_path_factory.getbasetemp()}"]\n')
    monkeypatch.setenv("RLAIF_LAB_SETTINGS", str(settings))
    monkeypatch.setenv("RLAIF_LAB_LOCAL_WORKER", "0")
    monkeypatch.delenv("RLAIF_LAB_EXECUTOR", raising=False)
    monkeypatch.chdir(tmp_path)
    st_config.set_option("server.address", "127.0.0.1")
    return tmp_path / "page.db"


def launch_page():
    from tests.test_pages_apptest import app

    return app()


def test_the_launch_page_shows_the_clusters_free_resources_and_refuses_more_gpus_than_a_node_has(
        page_env, head, monkeypatch):
    from tests.test_pages_apptest import by_key, errors

    monkeypatch.setenv("RAY_ADDRESS", head.address)
    at = launch_page()
    panel = [m.value for m in at.markdown if "Runs go to the Ray cluster at" in m.value]
    assert panel and f"`{head.address}`" in panel[0] and f"of {ray_head.NUM_CPUS:g} CPUs" in panel[0], panel
    assert not errors(at) and not by_key(at.button, "start-run").disabled
    by_key(at.number_input, "cfg-resources-gpus").set_value(1).run()
    assert any("asks for 1 GPU; the largest node of the Ray cluster" in e for e in errors(at)), errors(at)
    assert by_key(at.button, "start-run").disabled
    by_key(at.number_input, "cfg-resources-gpus").set_value(0).run()
    assert not errors(at) and not by_key(at.button, "start-run").disabled
    assert Store(page_env).list_runs() == []


def test_the_launch_page_says_an_unreachable_cluster_cannot_be_reached_and_queues_nothing(page_env, monkeypatch):
    from tests.test_pages_apptest import by_key, errors

    address = dead_address()
    monkeypatch.setenv("RAY_ADDRESS", address)
    at = launch_page()
    assert any(f"Ray cluster at `{address}`, which cannot be reached" in e and "nothing answers" in e
               for e in errors(at)), errors(at)
    assert by_key(at.button, "start-run").disabled
    assert Store(page_env).list_runs() == []
