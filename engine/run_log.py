"""A run's stored log: what it did and when, kept in the store's `run_logs` table after its process exits.

Responsible for: turning a run's progress into a few readable lines (each phase it enters and each new kind of
message, at once; a counter that moved within a phase at most every `every_s` seconds, and the phase's last message
when it ends, so an 800-response evaluation writes a handful of lines, not 800), the warnings and errors logged in the process while the run
executes (Python `logging` and `warnings`), and how the run ended. `engine.runner.execute` wraps every run in one.

Not responsible for: the run's status, error and traceback (the `runs` row, engine.runner) or drawing (the Live page
reads `Store.logs`). Writing a line never fails the run: a store that cannot be written loses the line, not the run.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.progress import Progress

if TYPE_CHECKING:
    from engine.store import Store


EVERY_S = 30.0  # within a phase, a counter's progress line at most this often
_DIGITS = re.compile(r"\d+")


class _Handler(logging.Handler):
    """Stores the process's warnings and errors (and the engine's own info lines) in the run's log."""

    def __init__(self, run_log: RunLog) -> None:
        super().__init__(level=logging.INFO)
        self.run_log = run_log
        self._info_at = -float("inf")

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "engine.runner":
            return  # the runner writes its own lines (started, cancelled, failed)
        if record.levelno < logging.WARNING:
            if not record.name.startswith("engine"):
                return  # other libraries' info chatter (httpx requests, ...) is not the run's story
            now = self.run_log.clock()
            if now - self._info_at < self.run_log.every_s:
                return  # e.g. the tiny policy's build logs its loss every few steps: one line per every_s
            self._info_at = now
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: skip it rather than fail the run
            return
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING \
            else "info"
        self.run_log.line(text, level)


class RunLog:
    """The log of one executing run: `progress(p)` for its Progress reports, `line()` for anything else, and
    `capturing()` to store the process's warnings and errors while the run executes."""

    def __init__(self, store: Store, run_id: str, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.run_id, self.every_s, self.clock = store, run_id, float(every_s), clock
        self.phase: str | None = None
        self._last_message = ""  # the phase's newest message
        self._written = ""  # the phase's last message that was stored
        self._written_at = 0.0
        self._busy = threading.local()  # a store write that logs must not write again (no recursion)
        self.failures = 0

    def line(self, message: str, level: str = "info", phase: str | None = None) -> None:
        """Store one line (of `phase`, default the current one); a failed write is counted and dropped."""
        if getattr(self._busy, "on", False) or not str(message).strip():
            return
        self._busy.on = True
        try:
            self.store.add_log(self.run_id, message, level=level, phase=phase or self.phase)
        except Exception:  # the store is locked, read-only, unreachable, or the run was deleted: keep running
            self.failures += 1
        finally:
            self._busy.on = False

    def progress(self, p: Progress) -> None:
        """A Progress report: a new phase is written at once (after the previous phase's last message), the same
        phase's message when `every_s` passed since its last stored line."""
        message = (p.message or "").strip()
        now = self.clock()
        if p.phase != self.phase:
            if self.phase is not None and self._last_message and self._last_message != self._written:
                self.line(self._last_message)  # how the previous phase ended ("evaluating before: 800/800")
            self.phase, self._last_message = p.phase, message
            self.line(message or p.phase)
            self._written, self._written_at = message, now
            return
        self._last_message = message
        if not message or message == self._written:
            return
        # a new kind of message ("loading the evaluator" after "loading the reward backends") at once; a counter
        # that moved ("evaluating before: 121/800" after "120/800") at most every every_s seconds
        if _DIGITS.sub("#", message) != _DIGITS.sub("#", self._written) or now - self._written_at >= self.every_s:
            self.line(message)
            self._written, self._written_at = message, now

    def wrap(self, notify: Callable[[Progress], None] | None) -> Callable[[Progress], None]:
        """A progress listener that logs each report, then calls `notify` (when given)."""

        def on_progress(p: Progress) -> None:
            self.progress(p)
            if notify is not None:
                notify(p)

        return on_progress

    def capturing(self) -> _Capture:
        """A context manager: while it is open, WARNING and ERROR records of any logger (and Python warnings) and the
        engine's INFO records go to this log too."""
        return _Capture(self)


class _Capture:
    def __init__(self, run_log: RunLog) -> None:
        self.handler = _Handler(run_log)
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> _Capture:
        root = logging.getLogger()
        root.addHandler(self.handler)
        self._saved["engine_level"] = logging.getLogger("engine").level
        if logging.getLogger("engine").getEffectiveLevel() > logging.INFO:
            # the engine's INFO lines ("building the tiny policy ...") reach this handler; other handlers keep
            # their own levels, so a console set to WARNING prints no more than before
            logging.getLogger("engine").setLevel(logging.INFO)
            for h in root.handlers:
                if h is not self.handler and h.level == logging.NOTSET:
                    self._saved.setdefault("handler_levels", []).append(h)
                    h.setLevel(root.level)
        self._saved["show"] = warnings.showwarning
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            self.handler.run_log.line(f"{category.__name__}: {message}", "warning")
            original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self.handler)
        logging.getLogger("engine").setLevel(self._saved["engine_level"])
        for h in self._saved.get("handler_levels", []):
            h.setLevel(logging.NOTSET)
        warnings.showwarning = self._saved["show"]
