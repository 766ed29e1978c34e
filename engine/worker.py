"""The background worker: one daemon thread per process that runs queued runs one at a time.

Responsible for: the queue (submit, cancel, order), executing each run with `engine.runner.execute`,
live progress (phase, step/total, ETA from step times), and RLHF's chain: a completed reward_model run
with `reward_model.then_ppo` queues its PPO run (engine.methods.reward_model.ppo_config) at the head of
the queue. A run is validated and its prompts are prepared *before* it is queued, so bad input raises
in the caller and nothing half-made lands in the store. Runs execute one at a time because a run takes
the whole device (CPU cores or the GPU).

Not responsible for: training (engine.runner), persistence (engine.store) or drawing (the app). The
UI never talks to the thread: the worker writes the store and the UI reads it.

One worker per database: on start the manager marks runs left "running" by a dead process as
"interrupted" and takes over runs left "queued", oldest first. `get_manager(db_url)` returns the
process-wide manager for a database (the Streamlit app wraps it in `st.cache_resource`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from engine.config import RunConfig

if TYPE_CHECKING:
    from engine.runner import Progress
    from engine.store import Store

log = logging.getLogger(__name__)

ETA_WINDOW = 10  # the ETA uses the mean of the last this-many step times


def eta_seconds(step_times: list[float], step: int, total: int | None, window: int = ETA_WINDOW) -> float | None:
    """Seconds left: the mean of the last `window` step times × the steps to go; None when unknown."""
    recent = [t for t in step_times[-window:] if t is not None and t == t and t >= 0]
    if not total or not recent:
        return None
    return max(total - step, 0) * sum(recent) / len(recent)


@dataclass
class RunProgress:
    """Where a run is, as the worker sees it (a snapshot)."""

    run_id: str
    phase: str = "queued"  # queued | data | load | eval_before | train | save | eval_after | done
    step: int = 0
    total: int = 0
    message: str = ""
    step_times: list[float] = field(default_factory=list)  # wall seconds of each finished PPO step
    updated: float = field(default_factory=time.time)

    @property
    def eta_s(self) -> float | None:
        """Estimated seconds to the end of training (evaluation after it not included)."""
        return eta_seconds(self.step_times, self.step, self.total)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


class RunManager:
    """A queue of runs and the one thread that executes them against `store`.

    `submit(cfg)` validates and queues; `cancel(run_id)` cancels a queued run at once and asks a
    running one to stop (the runner honours it within one PPO step); `queue()`, `current()` and
    `progress(run_id)` say what is going on. `start=False` builds the manager without its thread
    (for inspection in tests); `start()` starts it later.
    """

    def __init__(self, store: Store, start: bool = True) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._configs: dict[str, RunConfig] = {}
        self._current: str | None = None
        self._progress: dict[str, RunProgress] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.interrupted = store.mark_interrupted()  # runs a dead process left "running"
        if self.interrupted:
            log.warning("marked %d run(s) left running by a dead process as interrupted: %s",
                        len(self.interrupted), ", ".join(self.interrupted))
        self._adopt_queued()
        if start:
            self.start()

    # ---- lifecycle

    def start(self) -> None:
        """Start the worker thread, or restart it after `shutdown` (idempotent)."""
        with self._cond:
            self._stopping = False
            if self._thread is not None and self._thread.is_alive():
                return
            # Daemonic: a process that exits mid-run must not hang on it; the next start marks the run interrupted.
            self._thread = threading.Thread(target=self._loop, name="rlaif-worker", daemon=True)
            self._thread.start()

    def shutdown(self, cancel_current: bool = True, timeout: float | None = 30.0) -> bool:
        """Stop taking runs (queued ones stay queued); optionally ask the current run to stop too.

        Without `cancel_current` the current run finishes first. Returns True when the thread has
        ended within `timeout` seconds.
        """
        with self._cond:
            self._stopping = True
            current, thread = self._current, self._thread
            self._cond.notify_all()
        if cancel_current and current is not None:
            self.store.request_cancel(current)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def alive(self) -> bool:
        """True while the worker takes runs (started and not shut down)."""
        with self._cond:
            return not self._stopping and self._thread is not None and self._thread.is_alive()

    # ---- queue

    def submit(self, cfg: RunConfig) -> str:
        """Validate `cfg` (fields, then its data), create the run in the store as queued, queue it.

        Raises engine.config.ConfigError (a ValueError naming each field) before anything is stored.
        """
        return self._submit(cfg)

    def _submit(self, cfg: RunConfig, front: bool = False) -> str:
        from engine.runner import prepare_prompts

        if not isinstance(cfg, RunConfig):
            raise ValueError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
        cfg.check()
        prepare_prompts(cfg)  # a missing / empty / too small data source fails here, not in the worker
        run_id = self.store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps)
        with self._cond:
            if front:
                self._queue.appendleft(run_id)
            else:
                self._queue.append(run_id)
            self._configs[run_id] = cfg
            self._progress[run_id] = RunProgress(run_id, total=cfg.total_steps)
            self._cond.notify_all()
        return run_id

    def cancel(self, run_id: str) -> str:
        """Cancel a run: a queued one becomes "cancelled" now; a running one is asked to stop.

        Returns the run's status afterwards ("cancelled", or "running" while the stop is pending).
        KeyError for an unknown run; ValueError for a run that already finished.
        """
        with self._cond:
            if run_id in self._queue:
                self._queue.remove(run_id)
                cfg = self._configs.pop(run_id, None)
                self._progress.pop(run_id, None)
                self.store.set_status(run_id, "cancelled", error="cancelled before it started")
                if cfg is not None and _then_ppo(cfg):
                    self._note_ppo_stage(run_id, {"ppo_not_queued": "the reward-model run was cancelled"})
                self._cond.notify_all()
                return "cancelled"
            if run_id == self._current:  # taken by the thread, maybe not marked running yet
                self.store.request_cancel(run_id)
                return "running"
        record = self.store.get_run(run_id)
        if record.status == "running":
            self.store.request_cancel(run_id)
            return "running"
        if record.status == "queued":  # queued by another process: not ours to pop, but cancellable
            self.store.set_status(run_id, "cancelled", error="cancelled before it started")
            return "cancelled"
        raise ValueError(f"run {run_id} is {record.status}: only queued or running runs can be cancelled")

    def queue(self) -> list[str]:
        """Ids of the runs waiting, in the order they will run (the current run not included)."""
        with self._cond:
            return list(self._queue)

    def current(self) -> str | None:
        """Id of the run executing now, or None."""
        with self._cond:
            return self._current

    def progress(self, run_id: str) -> RunProgress | None:
        """A snapshot of a run's progress as this process saw it; None for runs it never held."""
        with self._cond:
            p = self._progress.get(run_id)
            return None if p is None else replace(p, step_times=list(p.step_times))

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Block until the run leaves queued/running (or the timeout passes); return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.store.get_run(run_id).status
            if status not in ("queued", "running"):
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return status
            with self._cond:
                self._cond.wait(0.2 if left is None else min(0.2, left))

    # ---- the thread

    def _adopt_queued(self) -> None:
        """Queue again the runs a dead process left "queued" (oldest first); unreadable configs fail."""
        for record in reversed(self.store.list_runs(status="queued")):
            try:
                cfg = RunConfig.from_yaml(record.config_yaml)
            except ValueError as exc:
                self.store.set_status(record.id, "running")
                self.store.set_status(record.id, "failed", error=f"unreadable config: {exc}")
                continue
            self._queue.append(record.id)
            self._configs[record.id] = cfg
            self._progress[record.id] = RunProgress(record.id, total=cfg.total_steps)

    def _next(self) -> str | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                if self._thread is threading.current_thread():
                    self._thread = None  # this thread ends; start() makes a new one
                return None
            run_id = self._queue.popleft()
            self._current = run_id
            return run_id

    def _loop(self) -> None:
        while (run_id := self._next()) is not None:
            try:
                self._run_one(run_id, self._configs.pop(run_id))
            finally:
                with self._cond:
                    self._current = None
                    if (p := self._progress.get(run_id)) is not None:
                        p.phase = "done"
                    self._cond.notify_all()

    def _run_one(self, run_id: str, cfg: RunConfig) -> None:
        from engine.runner import execute

        try:
            if self.store.get_run(run_id).status != "queued":  # cancelled by another process meanwhile
                return
        except KeyError:  # deleted meanwhile
            return
        t_last = time.perf_counter()

        def on_progress(p: Progress) -> None:
            nonlocal t_last
            now = time.perf_counter()
            with self._cond:
                rp = self._progress.setdefault(run_id, RunProgress(run_id))
                rp.phase, rp.message, rp.updated = p.phase, p.message, time.time()
                if p.phase == "train":
                    if p.done > rp.step:
                        rp.step_times.append(now - t_last)
                    rp.step, rp.total = p.done, p.total or rp.total
            t_last = now  # a step's time runs from the previous notification, so loading and evaluation never count

        try:
            execute(cfg, self.store, run_id, on_progress)
        except Exception:  # the runner already stored the error and its traceback
            log.exception("run %s failed", run_id)
        except BaseException:  # KeyboardInterrupt / SystemExit: the runner stored "interrupted"
            log.warning("run %s interrupted", run_id)
            raise
        if _then_ppo(cfg):
            self._queue_ppo_stage(run_id, cfg)

    # ---- RLHF: reward model, then PPO with it

    def _queue_ppo_stage(self, rm_id: str, cfg: RunConfig) -> str | None:
        """Queue the PPO run rewarded by the model that reward_model run `rm_id` trained (its reward_model.then_ppo),
        first in the queue so the chain goes on at once; returns its id.

        The reward-model run's summary records the PPO run's id ("ppo_run"), or why none was queued
        ("ppo_not_queued": the run failed or was cancelled, or the PPO config was refused)."""
        from engine.methods.reward_model import ppo_config

        try:
            record = self.store.get_run(rm_id)
        except KeyError:  # deleted meanwhile
            return None
        if record.status != "completed":
            note = {"ppo_not_queued": f"the reward-model run ended {record.status}"}
            log.warning("run %s ended %s: its PPO run (then_ppo) is not queued", rm_id, record.status)
            self._note_ppo_stage(rm_id, note)
            return None
        try:
            ppo_id = self._submit(ppo_config(cfg, record.summary or {}, rm_id), front=True)
        except Exception as exc:  # a ConfigError or unreadable data: say so on the reward-model run
            log.exception("run %s: its PPO run (then_ppo) could not be queued", rm_id)
            self._note_ppo_stage(rm_id, {"ppo_not_queued": f"{type(exc).__name__}: {exc}"})
            return None
        log.info("run %s completed: queued PPO run %s rewarded by its model", rm_id, ppo_id)
        self._note_ppo_stage(rm_id, {"ppo_run": ppo_id})
        return ppo_id

    def _note_ppo_stage(self, rm_id: str, note: dict[str, str]) -> None:
        """Add `note` to a reward-model run's summary (what became of its then_ppo stage)."""
        try:
            summary = self.store.get_run(rm_id).summary or {}
            self.store.set_summary(rm_id, {**summary, **note})
        except KeyError:  # deleted meanwhile
            pass


def _then_ppo(cfg: RunConfig) -> bool:
    """Whether a run, once completed, is followed by a PPO run rewarded by its model (RLHF's second stage)."""
    return cfg.method == "reward_model" and cfg.reward_model.then_ppo


# ---- the process-wide manager ---------------------------------------------------------------------

_MANAGERS: dict[str, RunManager] = {}
_MANAGERS_LOCK = threading.Lock()


def get_manager(db_url: str | None = None) -> RunManager:
    """The process's manager for this database (created and started on first use).

    `db_url`: a SQLAlchemy URL or file path; None means $RLAIF_LAB_DB or runs/rlaif_lab.db.
    """
    from engine.store import Store, resolve_url

    url = resolve_url(db_url)
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(url)
        if manager is None:
            manager = _MANAGERS[url] = RunManager(Store(url))
        elif not manager.alive:  # shut down earlier: the same manager takes runs again
            manager.start()
        return manager
