"""The worker: a process that claims queued runs from the store and executes them, one at a time.

Responsible for: the queue as the store holds it (submit: validate, then create a queued run; cancel), the worker
loop (`python -m engine worker`: register in the `workers` table, expire dead owners' leases, claim the next run,
execute it with `engine.runner.execute` while the store heartbeats it, repeat), live progress (phase, message and
step times go to the store with the heartbeat, so every process can show them and an ETA), a clean stop on
SIGTERM / SIGINT (the current run is asked to stop and ends "interrupted", saying why; a second signal interrupts at
once), RLHF's chain (a completed reward_model run with `reward_model.then_ppo` queues its PPO run ahead of the
others), starting a local worker process for a lab that has none (`ensure_local_worker`), and serving the policy
playground's requests between runs (engine.playground).

Not responsible for: training (engine.runner), persistence and leases (engine.store) or drawing (the app). The UI
never talks to a worker: it enqueues in the store and reads the store.

Runs execute one at a time per worker because a run takes the whole device (CPU cores or the GPU); several
workers (processes, machines) may serve one store, each run is claimed by exactly one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import RunConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from engine.runner import Progress
    from engine.store import Store

log = logging.getLogger(__name__)

ETA_WINDOW = 10  # the ETA uses the mean of the last this-many step times
THEN_PPO_PRIORITY = 10  # RLHF's PPO stage goes ahead of runs queued without a priority
DEFAULT_POLL_S = 1.0
# A worker the lab starts exits after this long with nothing to do, so one never lingers for good after its UI is
# gone; the next lab to open the store starts another ($RLAIF_LAB_WORKER_IDLE_EXIT_S overrides; 0: never).
LOCAL_WORKER_IDLE_EXIT_S = 900.0
IDLE_EXIT_ENV_VAR = "RLAIF_LAB_WORKER_IDLE_EXIT_S"


def eta_seconds(step_times, step: int, total: int | None, window: int = ETA_WINDOW) -> float | None:
    """Seconds left: the mean of the last `window` step times × the steps to go; None when unknown."""
    recent = [t for t in list(step_times)[-window:] if t is not None and t == t and t >= 0]
    if not total or not recent:
        return None
    return max(total - step, 0) * sum(recent) / len(recent)


# ---- the queue (what the UI and the CLI call) ------------------------------------------------------------


def submit(store: Store, cfg: RunConfig, priority: int = 0, user: str | None = None) -> str:
    """Validate `cfg` (fields, a model.init_from source in the store, then its data) and create it in the store as a queued run; returns its id.

    Raises engine.config.ConfigError (a ValueError naming each field) before anything is stored.
    """
    from engine.runner import prepare_prompts

    if not isinstance(cfg, RunConfig):
        raise ValueError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    cfg.check()
    if cfg.model.init_from:  # continue training: an unknown run, a missing checkpoint, another base fail here
        from engine.policy_source import resolve_init_from

        resolve_init_from(store, cfg)
    prepare_prompts(cfg)  # a missing / empty / too small data source fails here, not in the worker
    return store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps,
                            priority=priority, owner_user=user)


def cancel(store: Store, run_id: str) -> str:
    """Cancel a run: a queued one becomes "cancelled" now; a running one is asked to stop (its owner honours it
    within one training step). Returns the status afterwards ("cancelled", or "running" while the stop is pending).

    KeyError for an unknown run; ValueError for a run that already finished.
    """
    for _ in range(3):  # a worker may claim the queued run between our read and our write: look again
        record = store.get_run(run_id)
        if record.status == "running":
            store.request_cancel(run_id)
            return "running"
        if record.status != "queued":
            raise ValueError(f"run {run_id} is {record.status}: only queued or running runs can be cancelled")
        try:
            store.set_status(run_id, "cancelled", error="cancelled before it started")
        except ValueError:
            continue
        if _then_ppo_yaml(record.config_yaml):
            _note_ppo_stage(store, run_id, {"ppo_not_queued": "the reward-model run was cancelled"})
        return "cancelled"
    raise ValueError(f"run {run_id} changed status while being cancelled; try again")


def wait(store: Store, run_id: str, timeout: float | None = None, every: float = 0.2) -> str:
    """Block until the run leaves queued/running (or the timeout passes); return its status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = store.get_run(run_id).status
        if status not in ("queued", "running") or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(every)


def progress_listener(store: Store, run_id: str,
                      then: Callable[[Progress], None] | None = None) -> Callable[[Progress], None]:
    """An on_progress for `runner.execute` that hands phase, message and step times to the store (the heartbeat
    writes them, throttled); `then` is called too (the CLI's progress bars)."""
    t_last = time.perf_counter()
    last_done = 0

    def on_progress(p: Progress) -> None:
        nonlocal t_last, last_done
        now = time.perf_counter()
        step_time = None
        if p.phase == "train" and p.done > last_done:
            step_time, last_done = now - t_last, p.done
        store.note_progress(run_id, p.phase, p.message, step_time=step_time)
        t_last = now  # a step's time runs from the previous notification, so loading and evaluation never count
        if then is not None:
            then(p)

    return on_progress


# ---- the worker process ----------------------------------------------------------------------------------


class Worker:
    """Claims queued runs from the store at `url` and executes them, one at a time, until stopped.

    `run()` is the loop (`python -m engine worker`); `stop(reason)` asks it to end: the current run is asked to stop
    (it ends "interrupted" with `reason`) and the loop returns once it has. `once=True` returns when the queue is
    empty; `idle_exit_s` returns after that many seconds without a run to execute. The worker's own Store (owner
    id "w-<host>-<pid>-<hex>") heartbeats its row and its run. `resume_interrupted`: before each claim, queue again
    the runs whose process died (lease expired) and that have a checkpoint, so this or another worker resumes them
    (`requeue_interrupted`).
    """

    def __init__(self, url: str | None = None, poll_s: float = DEFAULT_POLL_S, lease_s: float | None = None,
                 device: str | None = None, idle_exit_s: float | None = None, resume_interrupted: bool = False) -> None:
        from engine.store import Store, new_owner_id

        self.store = Store(url, owner=new_owner_id("w"), lease_s=lease_s)
        self.id = self.store.owner
        self.poll_s = float(poll_s)
        self.idle_exit_s = idle_exit_s if idle_exit_s and idle_exit_s > 0 else None
        self.device = device
        self.resume_interrupted = bool(resume_interrupted)
        self.current: str | None = None
        self._stop = threading.Event()
        self._stop_reason = ""
        self._lock = threading.Lock()

    def stop(self, reason: str = "the worker was stopped") -> None:
        """End the loop; the current run (if any) is asked to stop and ends interrupted with `reason`."""
        with self._lock:
            self._stop_reason = reason
            current = self.current
        self._stop.set()
        if current is not None:
            try:
                self.store.request_cancel(current, reason=f"{reason} (worker {self.id}); resumable")
            except Exception:  # the store is unreachable: the lease runs out and others mark it instead
                log.exception("could not ask run %s to stop", current)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, once: bool = False) -> int:
        """The loop: returns the number of runs executed."""
        device = self.device or _device()
        self.store.register_worker(device=device)
        log.info("worker %s serving %r on %s (lease %g s)", self.id, self.store, device, self.store.lease_s)
        executed = 0
        idle_since = time.monotonic()
        unreachable = False
        try:
            while not self._stop.is_set():
                try:
                    self.store.expire_leases()
                    if self.resume_interrupted:
                        requeue_interrupted(self.store)
                    if self._serve_generations():  # playground requests first: seconds each, a run takes minutes
                        idle_since = time.monotonic()
                        continue
                    record = self.store.claim_run(device=device)
                except Exception as exc:  # the store is locked, read-only or unreachable: keep serving, look again
                    if not unreachable:  # one traceback per outage, not one a second
                        log.exception("worker %s: could not claim a run (%s); retrying until the store can be "
                                      "written", self.id, type(exc).__name__)
                    unreachable = True
                    self._stop.wait(max(self.poll_s, 1.0))
                    continue
                if unreachable:
                    log.warning("worker %s: the store can be written again", self.id)
                    unreachable = False
                if record is None:
                    if once:
                        break
                    if self.idle_exit_s is not None and time.monotonic() - idle_since >= self.idle_exit_s:
                        log.info("worker %s: idle for %g s, exiting", self.id, self.idle_exit_s)
                        break
                    self._stop.wait(self.poll_s)
                    continue
                with self._lock:
                    self.current = record.id
                    late_stop = self._stop.is_set()
                if late_stop:  # stopped between the claim and now: give it back as interrupted, untouched
                    self.store.request_cancel(record.id, reason=f"{self._stop_reason} (worker {self.id})")
                try:
                    self._execute(record)
                finally:
                    with self._lock:
                        self.current = None
                    idle_since = time.monotonic()
                executed += 1
        finally:
            try:
                self.store.unregister_worker()
            except Exception:  # its row goes silent and is pruned later
                log.exception("worker %s: could not unregister", self.id)
            self.store.close()
        return executed

    def _serve_generations(self) -> int:
        """Serve the queued policy-playground requests (engine.playground), oldest first; how many were served.
        Only between runs: a busy worker leaves them to an idle one or to the lab's playground process."""
        from engine.playground import serve_next

        served = 0
        while not self._stop.is_set() and serve_next(self.store):
            served += 1
        return served

    def _execute(self, record) -> None:
        if not execute_claimed(self.store, record, self.id):  # a second signal: stop the loop too
            self._stop.set()


def execute_claimed(store: Store, record, executor_id: str) -> bool:
    """Execute a run `store` has claimed (it owns the lease and heartbeats it) with `engine.runner.execute`, and
    queue RLHF's PPO stage after a completed reward model. The one execution path of a local worker and of a Ray
    task (engine.ray_dispatcher). Returns False when interrupted by a KeyboardInterrupt (a second signal; the
    runner stored "interrupted"), True otherwise: a failure is stored with its traceback, not raised."""
    from engine.resources import local_problems
    from engine.runner import execute

    try:
        cfg = RunConfig.from_yaml(record.config_yaml)
    except ValueError as exc:
        store.set_status(record.id, "failed", error=f"unreadable config: {exc}")
        return True
    if problems := local_problems(cfg):  # queued where the GPUs were counted elsewhere: say so, run nothing
        store.set_status(record.id, "failed", error=f"{problems[0]} (on {executor_id})")
        return True
    log.info("worker %s: run %s (%s)", executor_id, record.id, cfg.name)
    from engine.distributed import launched_world

    if cfg.distributed.num_processes > 1 and launched_world() == 1:  # its processes run it (engine.launch)
        from engine.launch import execute_launched

        return execute_launched(store, record, cfg, executor_id)  # (a reward model trains in one process)
    try:
        execute(cfg, store, record.id, progress_listener(store, record.id))
    except KeyboardInterrupt:
        log.warning("run %s interrupted", record.id)
        return False
    except Exception:  # the runner already stored the error and its traceback
        log.exception("run %s failed", record.id)
    if _then_ppo(cfg):
        queue_ppo_stage(store, record.id, cfg)
    return True


def requeue_interrupted(store: Store) -> list[str]:
    """Queue again every run that was interrupted because its process died (its lease expired: not one stopped by
    the user or by a worker's shutdown) and that can be resumed from a checkpoint; returns their ids. The worker that
    claims one resumes it from its newest checkpoint (`engine.runner.execute` resumes a run that has one).

    Safe with many workers: `reopen` moves a run only while it is still interrupted, so only one of them re-queues it.
    A run whose process dies again is re-queued again: a run that kills its worker each time (e.g. out of memory)
    comes back each lease period, so this is a worker option (`--resume-interrupted`), off by default."""
    from engine.runner import resume_problem
    from engine.store import INTERRUPTED_ERROR

    queued = []
    for record in store.list_runs(status="interrupted"):
        if not (record.error or "").startswith(INTERRUPTED_ERROR) or resume_problem(store, record.id):
            continue
        try:
            store.reopen(record.id, to="queued")
        except (ValueError, KeyError):  # another worker re-queued (or someone deleted) it first
            continue
        log.warning("run %s: its process died; queued again to resume from its checkpoint", record.id)
        queued.append(record.id)
    return queued


def _device() -> str:
    try:
        from engine.models import pick_device

        return pick_device("auto")
    except Exception:  # torch missing or broken: the worker still serves, its runs will say why they fail
        return "unknown"


def serve(url: str | None = None, once: bool = False, poll_s: float = DEFAULT_POLL_S,
          lease_s: float | None = None, idle_exit_s: float | None = None, resume_interrupted: bool = False) -> int:
    """`python -m engine worker`: a Worker with SIGTERM / SIGINT handled (first: stop cleanly, second: at once)."""
    worker = Worker(url, poll_s=poll_s, lease_s=lease_s, idle_exit_s=idle_exit_s, resume_interrupted=resume_interrupted)
    signals = {"n": 0}
    stopper = threading.Event()

    def on_signal(signum, frame) -> None:
        signals["n"] += 1
        if signals["n"] > 1:  # the second time: interrupt now (the runner records "interrupted")
            raise KeyboardInterrupt(f"signal {signum}")
        signals["name"] = signal.Signals(signum).name
        stopper.set()  # no store calls in a signal handler (it could hold a lock the store needs): a thread does

    def stop_when_signalled() -> None:
        stopper.wait()
        worker.stop(f"the worker received {signals['name']}")

    threading.Thread(target=stop_when_signalled, name="worker-stopper", daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    print(f"worker {worker.id} serving {worker.store!r} (pid {os.getpid()})", flush=True)
    try:
        n = worker.run(once=once)
    except KeyboardInterrupt:
        n = -1
    print(f"worker {worker.id} stopped" + (f" after {n} run(s)" if n >= 0 else ""), flush=True)
    return 0


def ensure_local_worker(store: Store, log_dir: str | Path | None = None,
                        env: dict[str, str] | None = None) -> subprocess.Popen | None:
    """Start a local worker process for `store` unless a live one serves it (a fresh heartbeat in `workers`).

    Returns the process started (None when one was serving). Its output goes to <log_dir>/worker-<pid>.log
    (default: runs/ beside a SQLite store, else ./runs). The worker runs in its own session, so it outlives the
    process that started it (the UI may restart while it trains); it exits after LOCAL_WORKER_IDLE_EXIT_S seconds
    with nothing to do. `env`: added to its environment (the lab's executor: with $RAY_ADDRESS it is a dispatcher).
    """
    store.expire_leases()
    if store.live_workers():
        return None
    if log_dir is None:
        db = store.engine.url.database if store.engine.url.get_backend_name() == "sqlite" else None
        log_dir = Path(db).parent if db and db != ":memory:" else Path("runs")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    from engine.store import DB_ENV_VAR

    # The URL goes in the environment, not on the command line: a PostgreSQL URL's password would show in `ps`.
    env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", DB_ENV_VAR: store.url}
    root = str(Path(__file__).resolve().parents[1])  # so `-m engine` finds this checkout from any directory
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "ab") as out:
        idle = os.environ.get(IDLE_EXIT_ENV_VAR) or str(LOCAL_WORKER_IDLE_EXIT_S)
        proc = subprocess.Popen([sys.executable, "-m", "engine", "worker", "--idle-exit-s", idle],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    log.info("started a local worker (pid %d) for %r; log %s", proc.pid, store, log_path)
    return proc


# ---- RLHF: reward model, then PPO with it ------------------------------------------------------------------


def queue_ppo_stage(store: Store, rm_id: str, cfg: RunConfig) -> str | None:
    """Queue the PPO run rewarded by the model that reward_model run `rm_id` trained (its reward_model.then_ppo),
    ahead of the other queued runs so the chain goes on at once; returns its id.

    The reward-model run's summary records the PPO run's id ("ppo_run"), or why none was queued
    ("ppo_not_queued": the run failed or was cancelled, or the PPO config was refused)."""
    from engine.methods.reward_model import ppo_config

    try:
        record = store.get_run(rm_id)
    except KeyError:  # deleted meanwhile
        return None
    if record.status != "completed":
        log.warning("run %s ended %s: its PPO run (then_ppo) is not queued", rm_id, record.status)
        _note_ppo_stage(store, rm_id, {"ppo_not_queued": f"the reward-model run ended {record.status}"})
        return None
    try:
        ppo_id = submit(store, ppo_config(cfg, record.summary or {}, rm_id), priority=THEN_PPO_PRIORITY)
    except Exception as exc:  # a ConfigError or unreadable data: say so on the reward-model run
        log.exception("run %s: its PPO run (then_ppo) could not be queued", rm_id)
        _note_ppo_stage(store, rm_id, {"ppo_not_queued": f"{type(exc).__name__}: {exc}"})
        return None
    log.info("run %s completed: queued PPO run %s rewarded by its model", rm_id, ppo_id)
    _note_ppo_stage(store, rm_id, {"ppo_run": ppo_id})
    return ppo_id


def _note_ppo_stage(store: Store, rm_id: str, note: dict[str, Any]) -> None:
    """Add `note` to a reward-model run's summary (what became of its then_ppo stage)."""
    try:
        summary = store.get_run(rm_id).summary or {}
        store.set_summary(rm_id, {**summary, **note})
    except KeyError:  # deleted meanwhile
        pass


def _then_ppo(cfg: RunConfig) -> bool:
    """Whether a run, once completed, is followed by a PPO run rewarded by its model (RLHF's second stage)."""
    return cfg.method == "reward_model" and cfg.reward_model.then_ppo


def _then_ppo_yaml(config_yaml: str) -> bool:
    try:
        return _then_ppo(RunConfig.from_yaml(config_yaml))
    except ValueError:
        return False
