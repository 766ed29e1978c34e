"""Condition-based waiting for tests that watch other threads or processes (no wall-clock assertions)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 120.0, every: float = 0.1) -> bool:
    """Poll `predicate` every `every` seconds until it is truthy (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
