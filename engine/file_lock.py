"""An exclusive advisory lock on a file, between processes of one machine (flock).

Used where two processes could do one piece of work twice: building a cached asset (engine.assets) and migrating a
fresh SQLite store (engine.migrations). flock locks are separate from the POSIX record locks SQLite takes, so
holding one on a database file only orders the processes that ask for it. Without fcntl (Windows) it is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing, never truncated) for the duration of the block."""
    try:
        import fcntl
    except ImportError:  # Windows: callers keep their results consistent by other means (atomic renames)
        yield
        return
    with open(path, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
