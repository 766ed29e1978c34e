"""What a running method tells its listener, and how it learns that it must stop.

A leaf module (it imports nothing of the engine), so every method, the runner, the worker and the CLI can share
these types without importing one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class RunCancelled(Exception):
    """Raised inside a run when its cancellation was requested; the runner marks the run `cancelled`."""


@dataclass
class Progress:
    """What a progress listener is told: the phase, how far it is, and a one-line message."""

    phase: str  # data | load | eval_before | label | train | save | eval_after | done
    done: int = 0
    total: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


# A progress listener; and the check a method calls between units of work (raises RunCancelled when asked to stop).
Notify = Callable[[Progress], None]
CancelCheck = Callable[[], None]
