"""The Ray executor: a dispatcher process that sends each queued run to a Ray cluster as a task.

Responsible for: the dispatcher loop (`python -m engine worker` with $RAY_ADDRESS / $RLAIF_LAB_EXECUTOR=ray):
claim the head of the store's queue exactly as a local worker claims it (so each run executes once), once the
cluster has the resources its config asks for free; submit it as a Ray task reserving those resources
(engine.resources.ray_options); hand the run's lease to the task, which adopts it (Store.adopt_run) and executes the
run through the local worker's own path (engine.worker.execute_claimed: engine.runner, the shared store, its own
heartbeat); watch the tasks (a run cancelled while it waits for a node is cancelled there; a task that could not
start fails its run with Ray's reason); and a clean stop (SIGTERM: running runs stop at their next step boundary,
interrupted and resumable; runs still waiting go back to the queue).

Not responsible for: what a run does (engine.runner), persistence and leases (engine.store), or the cluster's address
and nodes (engine.ray_cluster). The store stays the single source of truth and the queue: Ray only places and runs
processes. A task whose node dies stops heartbeating; its run is marked interrupted when the lease expires, as for a
local worker that dies (and `--resume-interrupted` queues it again to resume from its checkpoint).

Ray is imported inside the functions that use it: this module is importable without Ray installed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from engine.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.store import RunRecord

log = logging.getLogger(__name__)

TASK_NAME = "rlaif-lab-run"  # Ray task name prefix (the dashboard / `ray list tasks` show "rlaif-lab-run r-…")
NAMESPACE = "rlaif-lab"


def execute_on_ray(url: str, run_id: str, from_owner: str, lease_s: float, cwd: str | None = None) -> str:
    """The Ray task: adopt run `run_id`'s lease from the dispatcher `from_owner` and execute it as a local worker
    would (engine.worker.execute_claimed), writing to the store at `url`; returns the run's status afterwards, or
    "not adopted" when the run no longer waits for this task (cancelled meanwhile, or its lease expired).

    `cwd`: the dispatcher's working directory, entered when this node has it, so relative paths in the config
    (output_dir "runs") mean what they mean for local workers."""
    from engine.store import Store, new_owner_id
    from engine.worker import _device, execute_claimed

    engine_log = logging.getLogger("engine")
    if not engine_log.handlers:  # the run's log lines go to the task's stderr, which Ray forwards to the dispatcher
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        engine_log.addHandler(handler)
        engine_log.setLevel(logging.INFO)
        engine_log.propagate = False
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # a fresh worker process per task (max_calls=1): nothing else sees it
    store = Store(url, owner=new_owner_id("ray"), lease_s=lease_s)
    try:
        device = _device()
        store.register_worker(device=f"{device} (ray task)")  # the Runs page lists where each run executes
        record = store.adopt_run(run_id, from_owner, device=device)
        if record is None:
            log.warning("run %s no longer waits for this Ray task (cancelled, or its lease expired)", run_id)
            return "not adopted"
        execute_claimed(store, record, store.owner)
        return store.get_run(run_id).status
    finally:
        try:
            store.unregister_worker()
        except Exception:  # its row goes silent and is pruned later
            log.exception("Ray task for run %s: could not unregister", run_id)
        store.close()


class RayDispatcher:
    """Claims queued runs from the store at `url` and runs each as a task on the Ray cluster at `address`, as many
    at once as the cluster has room for, until stopped.

    `run()` is the loop; `stop(reason)` ends it (running runs are asked to stop and end interrupted with `reason`;
    runs still waiting for a node go back to the queue). `once=True` returns when the queue is empty and every task
    has ended; `idle_exit_s` returns after that many seconds with nothing queued or running. The dispatcher's own
    Store (owner "dispatch-<host>-<pid>-<hex>") is registered in the `workers` table, so a lab finds the queue served
    and starts no local worker. `resume_interrupted`: as engine.worker.Worker's.
    """

    def __init__(self, url: str | None = None, address: str | None = None, poll_s: float = 1.0,
                 lease_s: float | None = None, idle_exit_s: float | None = None,
                 resume_interrupted: bool = False) -> None:
        from engine.ray_cluster import Executor, parse_address
        from engine.store import Store, new_owner_id

        self.address = address or Executor.from_env({**os.environ, "RLAIF_LAB_EXECUTOR": "ray"}).address
        parse_address(self.address)  # RayUnavailable for a misspelt address, before the store is touched
        self.store = Store(url, owner=new_owner_id("dispatch"), lease_s=lease_s)
        self.id = self.store.owner
        self.poll_s = float(poll_s)
        self.idle_exit_s = idle_exit_s if idle_exit_s and idle_exit_s > 0 else None
        self.resume_interrupted = bool(resume_interrupted)
        self.tasks: dict[str, Any] = {}  # run id -> the ObjectRef of its task
        self._remote = None
        self._waiting_note: str | None = None  # the run last logged as waiting for resources (logged once)
        self._stop = threading.Event()
        self._stop_reason = ""
        self.after_connect: Callable[[], None] | None = None  # called once joined (serve: signal handlers)

    def stop(self, reason: str = "the dispatcher was stopped") -> None:
        """End the loop; see the class docstring. Safe from another thread (not from a signal handler)."""
        self._stop_reason = reason
        self._stop.set()

    # ---- the loop

    def run(self, once: bool = False) -> int:
        """Join the cluster and dispatch until stopped; returns the number of runs submitted.
        RayUnavailable (nothing claimed) when the cluster cannot be reached or joined."""
        import ray

        from engine.ray_cluster import connect

        connect(self.address, log_to_driver=True, namespace=NAMESPACE)
        if self.after_connect is not None:
            self.after_connect()
        self._remote = ray.remote(max_calls=1, max_retries=0)(execute_on_ray)  # a fresh process per run
        self.store.register_worker(device=f"ray {self.address}")
        log.info("dispatcher %s serving %r on the Ray cluster at %s (lease %g s)", self.id, self.store, self.address,
                 self.store.lease_s)
        submitted = 0
        idle_since = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    self.store.expire_leases()
                    if self.resume_interrupted:
                        from engine.worker import requeue_interrupted

                        requeue_interrupted(self.store)
                    self._collect_finished()
                    self._watch_waiting()
                    if self._stop.is_set():
                        break
                    if not self._waiting() and self._dispatch_next():
                        submitted += 1
                        idle_since = time.monotonic()
                        continue
                    queue_empty = not self.store.list_runs("queued")
                except Exception:  # the store or the cluster is away for a moment: keep serving, look again
                    log.exception("dispatcher %s: could not dispatch; retrying", self.id)
                    self._stop.wait(max(self.poll_s, 1.0))
                    continue
                if self.tasks:
                    idle_since = time.monotonic()
                elif queue_empty and once:
                    break
                elif self.idle_exit_s is not None and time.monotonic() - idle_since >= self.idle_exit_s:
                    log.info("dispatcher %s: idle for %g s, exiting", self.id, self.idle_exit_s)
                    break
                self._stop.wait(self.poll_s)
        finally:
            try:
                self._shutdown()
            finally:
                try:
                    self.store.unregister_worker()
                except Exception:
                    log.exception("dispatcher %s: could not unregister", self.id)
                self.store.close()
                ray.shutdown()
        return submitted

    def _waiting(self) -> list[str]:
        """Runs submitted whose task has not adopted them yet (waiting for a node or starting)."""
        return [run_id for run_id in self.tasks if self.store.handed_over(run_id)]

    def _dispatch_next(self) -> bool:
        """Claim the head of the queue and submit it, if the cluster has its resources free now; whether one was."""
        import ray

        from engine.resources import cluster_problems, fits_now, ray_options

        queued = sorted(self.store.list_runs("queued"), key=lambda r: (-r.priority, r.created_at, r.id))
        if not queued:
            return False
        head = queued[0]
        try:
            cfg = RunConfig.from_yaml(head.config_yaml)
        except ValueError as exc:
            return self._claim_and_fail(head, f"unreadable config: {exc}")
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        if not fits_now(cfg.resources, has_gpus, ray.available_resources()):
            if self._waiting_note != head.id:  # first look at this head of the queue
                from engine.ray_cluster import cluster_info_here

                # Checked when it was queued; nodes may have gone since. No node will ever hold it: fail it, say why.
                if problems := cluster_problems(cfg, cluster_info_here(self.address)):
                    return self._claim_and_fail(head, "; ".join(str(p) for p in problems))
                log.info("run %s waits for free resources on the Ray cluster (%s)", head.id,
                         ray_options(cfg.resources, has_gpus))
                self._waiting_note = head.id
            return False
        try:
            record = self.store.claim_run(head.id, device=f"ray {self.address}")
        except (KeyError, ValueError):  # claimed by another worker, or cancelled, since we looked
            return False
        self._submit(record, cfg, ray_options(cfg.resources, has_gpus))
        return True

    def _claim_and_fail(self, head: RunRecord, error: str) -> bool:
        try:
            self.store.claim_run(head.id)
        except (KeyError, ValueError):
            return False
        self.store.set_status(head.id, "failed", error=error)
        log.error("run %s failed before it was sent to Ray: %s", head.id, error)
        return False

    def _submit(self, record: RunRecord, cfg: RunConfig, options: dict[str, Any]) -> None:
        self.store.hand_over(record.id)  # keep its lease alive until the task adopts it
        ref = self._remote.options(name=f"{TASK_NAME} {record.id}", **options).remote(
            self.store.url, record.id, self.id, self.store.lease_s, os.getcwd())
        self.tasks[record.id] = ref
        log.info("dispatcher %s: run %s (%s) sent to Ray with %s", self.id, record.id, cfg.name, options)

    def _collect_finished(self) -> None:
        """Forget tasks that ended; a task that could not run its run fails the run with Ray's reason."""
        import ray

        if not self.tasks:
            return
        done, _ = ray.wait(list(self.tasks.values()), num_returns=len(self.tasks), timeout=0)
        finished = {id(ref) for ref in done}
        for run_id, ref in list(self.tasks.items()):
            if id(ref) not in finished:
                continue
            del self.tasks[run_id]
            try:
                log.info("run %s: its Ray task ended (%s)", run_id, ray.get(ref))
            except Exception as exc:  # the task died (worker, node), was cancelled, or could not start
                self._task_failed(run_id, exc)

    def _task_failed(self, run_id: str, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"
        # Read the row, not the last heartbeat's view: a task that adopted its run and died within one heartbeat
        # interval would otherwise be reported as one that never started.
        if self.store.handed_over(run_id, confirm=True):  # it never started: this dispatcher still holds the lease
            try:
                self.store.set_status(run_id, "failed", error=f"the Ray task could not start the run: {reason}")
            except (KeyError, ValueError):
                pass
            log.error("run %s: its Ray task could not start it: %s", run_id, reason)
        else:  # it ran and died with its worker or node: the lease expires and any process marks it interrupted
            log.warning("run %s: its Ray task ended abnormally (%s); the run is marked interrupted once its lease "
                        "(%g s) expires", run_id, reason, self.store.lease_s)

    def _watch_waiting(self) -> None:
        """A run cancelled while it waits for a node is cancelled in Ray and in the store."""
        import ray

        for run_id in self._waiting():
            if not self.store.get_run(run_id).cancel_requested:
                continue
            try:  # first in the store (only while this dispatcher still owns it): the task then adopts nothing
                self.store.set_status(run_id, "cancelled", error="cancelled before it started (it was waiting "
                                                                 "for a Ray node)")
            except ValueError:  # adopted a moment ago: its runner sees the cancel request at its first step
                continue
            ray.cancel(self.tasks[run_id])  # frees its place in Ray's queue (never interrupts a running run)
            log.info("run %s cancelled while it waited for a Ray node", run_id)

    def _shutdown(self) -> None:
        """Runs still waiting go back to the queue; running ones are asked to stop (interrupted, resumable), and
        their tasks are waited for (a second signal stops waiting: their leases then expire)."""
        import ray

        if not self.tasks:
            return
        reason = self._stop_reason or "the dispatcher stopped"
        for run_id, ref in list(self.tasks.items()):
            if self.store.handed_over(run_id, confirm=True):
                try:
                    self.store.set_status(run_id, "interrupted", error=f"{reason} before it started")
                except (KeyError, ValueError):  # adopted meanwhile: ask it to stop as a running one
                    self.store.request_cancel(run_id, reason=f"{reason} (dispatcher {self.id}); resumable")
                    continue
                ray.cancel(ref)
                try:
                    self.store.reopen(run_id, to="queued")
                    log.info("run %s had not started: queued again", run_id)
                except (KeyError, ValueError):  # another worker re-queued (or someone deleted) it first
                    pass
            else:
                self.store.request_cancel(run_id, reason=f"{reason} (dispatcher {self.id}); resumable")
        log.info("dispatcher %s: waiting for %d Ray task(s) to stop", self.id, len(self.tasks))
        while self.tasks:
            ray.wait(list(self.tasks.values()), num_returns=len(self.tasks), timeout=1.0)
            self._collect_finished()


def serve(url: str | None = None, address: str | None = None, once: bool = False, poll_s: float = 1.0,
          lease_s: float | None = None, idle_exit_s: float | None = None, resume_interrupted: bool = False) -> int:
    """`python -m engine worker` with the Ray executor: a RayDispatcher with SIGTERM / SIGINT handled (first: stop
    cleanly, second: at once). RayUnavailable before anything is claimed when the cluster cannot be reached."""
    from engine.ray_cluster import check_address

    dispatcher = RayDispatcher(url, address, poll_s=poll_s, lease_s=lease_s, idle_exit_s=idle_exit_s,
                               resume_interrupted=resume_interrupted)
    try:
        check_address(dispatcher.address)
    except Exception:
        dispatcher.store.close()
        raise
    signals = {"n": 0}
    stopper = threading.Event()

    def on_signal(signum, frame) -> None:
        signals["n"] += 1
        if signals["n"] > 1:
            raise KeyboardInterrupt(f"signal {signum}")
        signals["name"] = signal.Signals(signum).name
        stopper.set()  # no store calls in a signal handler: a thread does them

    def stop_when_signalled() -> None:
        stopper.wait()
        dispatcher.stop(f"the dispatcher received {signals['name']}")

    threading.Thread(target=stop_when_signalled, name="dispatcher-stopper", daemon=True).start()
    print(f"dispatcher {dispatcher.id} serving {dispatcher.store!r} on the Ray cluster at {dispatcher.address} "
          f"(pid {os.getpid()})", flush=True)

    def install_handlers() -> None:  # after ray.init, which installs a SIGTERM handler of its own
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

    dispatcher.after_connect = install_handlers
    try:
        n = dispatcher.run(once=once)
    except KeyboardInterrupt:
        n = -1
    print(f"dispatcher {dispatcher.id} stopped" + (f" after submitting {n} run(s)" if n >= 0 else ""), flush=True)
    return 0
