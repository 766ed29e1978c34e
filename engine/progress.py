"""What a running method tells its listener, and how it learns that it must stop.

A leaf module (it imports nothing of the engine), so every method, the runner, the worker and the CLI can share
these types without importing one another.

Two ways to stop a run between steps, both leaving a checkpoint of the last complete step: a cancel request in the
store (the run ends `cancelled`), and `request_stop()` for the whole process, e.g. from a SIGTERM handler (the run
ends `interrupted` and can be resumed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class RunCancelled(Exception):
    """Raised inside a run when its cancellation was requested; the runner marks the run `cancelled`."""


class RunInterrupted(KeyboardInterrupt):
    """Raised inside a run, between steps, after `request_stop()`; the runner marks the run `interrupted`."""


_stop = threading.Event()
_reason = ["stop requested"]


def request_stop(reason: str = "stop requested") -> None:
    """Ask every run of this process to stop at its next step boundary (after saving a checkpoint); `reason` becomes
    the run's error (e.g. "signal 15"). Safe to call from a signal handler."""
    _reason[0] = reason
    _stop.set()


def stop_reason() -> str:
    """What `request_stop` was given."""
    return _reason[0]


def stop_requested() -> bool:
    """True once `request_stop()` was called (for the rest of the process's life)."""
    return _stop.is_set()


@dataclass
class Progress:
    """What a progress listener is told: the phase, how far it is, and a one-line message."""

    phase: str  # data | load | eval_before | label | train | save | eval_after | done
    done: int = 0
    total: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    unit: str = ""  # what `done` counts (step, response, pair, prompt); "" : the phase's usual unit


# A progress listener; and the check a method calls between units of work (raises RunCancelled when asked to stop).
Notify = Callable[[Progress], None]
CancelCheck = Callable[[], None]
