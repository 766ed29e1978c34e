"""Who is watching a run right now: the Live tabs that poll the watch route (app/serve.py), counted so that they share
one redraw budget. Three visible tabs on one run then redraw, together, about as often as one tab would, and what
watching costs the run does not grow with the number of tabs. A hidden or closed tab stops polling and drops out
after `ttl_s`."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

# A visible Live tab polls at least every 5 s (pages/live.py), but not while its page reruns, which takes tens of
# seconds on a busy machine; a closed or hidden tab keeps the others' waits longer for at most this long.
WATCHER_TTL_S = 60.0
MAX_WATCHERS = 10_000  # ids held across all runs; beyond it the least recently seen are dropped
_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class Watchers:
    """Distinct watcher ids seen per run within the last `ttl_s` seconds (thread-safe; the route runs in a pool)."""

    def __init__(self, ttl_s: float = WATCHER_TTL_S, clock: Callable[[], float] = time.monotonic,
                 max_ids: int = MAX_WATCHERS) -> None:
        self.ttl_s, self.clock, self.max_ids = ttl_s, clock, max_ids
        self._seen: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def seen(self, run_id: str, watcher_id: str | None) -> int:
        """Record that `watcher_id` polled `run_id` now; return how many distinct watchers polled it within the TTL
        (at least 1: the caller). An id that is not 1–32 letters or digits is counted but not recorded."""
        now = self.clock()
        with self._lock:
            ids = {k: t for k, t in self._seen.get(run_id, {}).items() if now - t <= self.ttl_s}
            if ids:
                self._seen[run_id] = ids
            else:
                self._seen.pop(run_id, None)  # no empty entry kept for a run nobody watches
            if watcher_id and _ID.fullmatch(watcher_id):
                self._seen[run_id] = ids
                ids[watcher_id] = now
                if sum(len(v) for v in self._seen.values()) > self.max_ids:
                    self._bound()
                return len(self._seen[run_id])  # the id just seen is the newest: it stays
            return len(ids) + 1

    def _bound(self) -> None:
        """Keep at most max_ids ids, dropping the least recently seen (expired ones are the oldest of all)."""
        flat = sorted((t, r, k) for r, v in self._seen.items() for k, t in v.items())
        for _, r, k in flat[:max(0, len(flat) - self.max_ids)]:
            del self._seen[r][k]
            if not self._seen[r]:
                del self._seen[r]
