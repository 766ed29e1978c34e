"""The store's schema versions (Alembic), applied by `engine.store.Store` when it opens a database.

Responsible for: bringing any database the lab has ever written to the newest schema ("head") and refusing one
written by a newer version. `upgrade(engine)` is the only entry point the store needs; Alembic runs
programmatically from `engine/migrations/` (no alembic.ini at runtime).

- A fresh database is built by running every revision from the first, so the migrations themselves are what
  creates a store (and are tested every time one is made).
- A store written before migrations existed (no `alembic_version` table) is upgraded from the baseline revision,
  whose tables are created only where missing: in effect the old store is stamped as the baseline, and one so old
  that it lacks a table (e.g. `scores`) gets it.
- A database at a revision this code does not know comes from a newer version: `SchemaVersionError` names both.

Revisions use plain SQLAlchemy types (no SQLite-only SQL) and batch mode for ALTERs, so they run on PostgreSQL too.
New revision, for developers: `alembic -c engine/migrations/alembic.ini revision -m "what" --autogenerate`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from engine import file_lock

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent


class SchemaVersionError(RuntimeError):
    """The database's schema revision is unknown to this version of the lab (it was written by a newer one)."""


def _config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The database's revision (None: never migrated, i.e. fresh or written before migrations existed)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def check_known(revision: str | None, url: str = "the database") -> None:
    """SchemaVersionError unless `revision` is one this code knows (None, i.e. unversioned, is fine)."""
    from alembic.script import ScriptDirectory

    if revision is None:
        return
    script = ScriptDirectory.from_config(_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if revision not in known:
        raise SchemaVersionError(
            f"{url} has store schema revision {revision!r}, which this version of RLAIF Lab does not know (it "
            f"knows up to {script.get_current_head()!r}): the database was written by a newer version of the lab. "
            f"Upgrade the lab, or point it at another database (--db / $RLAIF_LAB_DB).")


# Any fixed number: the PostgreSQL advisory lock that serialises migrations between processes ("RLAIF" in ASCII).
_PG_LOCK_KEY = 0x524C414946


def upgrade(engine: Engine, url: str = "the database") -> str:
    """Bring the database to head (a no-op when it is there already); returns the revision it was at before.

    Several processes may open a fresh store at once (workers started together, two CLI runs): the migration runs
    under a lock (PostgreSQL: an advisory lock in the migration's transaction; SQLite: a flock on its folder), and
    the revision is read again under it, so the second process finds the schema made instead of creating it twice
    ("table alembic_version already exists")."""
    from alembic import command

    with engine.connect() as conn:
        before = current_revision(conn)
    check_known(before, url)
    head = head_revision()
    if before == head:
        return before
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # A batch ALTER on SQLite copies a table and drops the old one; with foreign keys on, dropping `runs`
            # would cascade into metrics. The pragma only takes effect outside a transaction, hence here.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()  # end the autobegun transaction, so the migrations get one of their own
        path = engine.url.database if sqlite else None
        file_db = bool(path) and path != ":memory:" and not path.startswith("file:")
        # the database's folder, not its file: see engine.file_lock (a closed descriptor of the file would drop
        # SQLite's own locks in this process)
        with file_lock.exclusive(Path(path).resolve().parent) if file_db else contextlib.nullcontext():
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
                now = current_revision(conn)  # another process may have migrated while this one waited
                check_known(now, url)
                if now != head:
                    command.upgrade(_config(conn), "head")
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")  # pooled: the next user expects it on
            conn.commit()
    return before
