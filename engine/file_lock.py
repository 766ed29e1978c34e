"""An exclusive advisory lock between processes of one machine (flock on a file or a directory).

Used where two processes could do one piece of work twice: building a cached asset (engine.assets) and migrating a
fresh SQLite store (engine.migrations, which locks the database's folder). Never lock an SQLite database file
itself: closing any descriptor of that file drops every POSIX lock SQLite holds on it in this process, and another
process may then reset a write-ahead log that still holds committed rows. Without fcntl (Windows) it is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the duration of the block: a directory, or a file (created if missing,
    never truncated)."""
    try:
        import fcntl
    except ImportError:  # Windows: callers keep their results consistent by other means (atomic renames)
        yield
        return
    fd = os.open(path, os.O_RDONLY) if os.path.isdir(path) else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
