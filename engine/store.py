"""The run store: the single source of truth for runs, metrics, samples, evaluations, scores and checkpoints.

Responsible for: persisting everything a run produces, safely under concurrent use, and who executes which run
(leases, below). Worker and CLI processes write while the Streamlit UI reads; every method opens one short
Session, and every write commits before the method returns, so nothing is lost if the process dies a moment later.

Not responsible for: running anything, parsing run configs (the YAML is stored as text), or drawing.

Backends: any SQLAlchemy URL ("sqlite:///runs/x.db", "postgresql://...") or a plain file path
(SQLite). SQLite files are opened in WAL mode (readers never block the writer, and the reverse),
synchronous=NORMAL (durable across a process crash; only an OS crash can drop the last commits),
foreign_keys=ON (so deleting a run cascades) and a 30 s busy timeout (concurrent writers wait
instead of failing with "database is locked"). An in-memory SQLite database (":memory:") exists
once per thread, so a worker thread would not see the UI's data: use a file whenever threads or
processes share the store.

Metric values are stored as floats; non-finite values (NaN, +inf, -inf) are stored as NULL and
come back as NaN, so a diverged step keeps its row and shows as a gap in a chart.

Leases: a run is executed by exactly one process, its owner. A Store moves a run to "running" only as its owner
(`claim_run`, or `set_status(run, "running")`), and from then on a daemon thread of that Store writes the run's
heartbeat every `heartbeat_s` seconds, together with the phase / message / step times the run reported
(`note_progress`), until the run leaves "running". A run whose heartbeat is older than the lease timeout
(`lease_s`, default 30 s, $RLAIF_LAB_LEASE_S) belongs to a dead process: `expire_leases`, which any process may
call, marks it "interrupted". Nothing else marks another process's run. A worker process registers itself in the
`workers` table (`register_worker`) and the same thread heartbeats it.

Scores are second opinions on hold-out responses computed after a run (e.g. a trained reward model's
helpfulness score of each "after" response, engine.compare), kept so they are computed once.

The schema is versioned (engine/migrations, Alembic): opening a store upgrades it to the newest schema, and a
store written by a newer version of the lab is refused (engine.migrations.SchemaVersionError). The models below
must match the newest revision (tests/test_migrations.py compares them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time as _time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from engine.config import METHODS  # the one list of methods (a run of any other is refused)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_DB_PATH = Path("runs") / "rlaif_lab.db"
DB_ENV_VAR = "RLAIF_LAB_DB"
LEASE_ENV_VAR = "RLAIF_LAB_LEASE_S"
DEFAULT_LEASE_S = 30.0
STEP_TIMES_KEPT = 20  # step times stored per run, for the ETA (the mean of the last ones)

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE_STATUSES = frozenset({"queued", "running"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "interrupted"})
# Allowed status transitions; anything else is a bug in the caller and raises ValueError.
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"completed", "failed", "cancelled", "interrupted"}),
}
EVAL_PHASES = ("before", "after")
# A playground request: queued, then served by one process (loading -> generating -> scoring), then done or failed.
GENERATION_STATUSES = ("queued", "loading", "generating", "scoring", "done", "failed")
GENERATION_WORKING = ("loading", "generating", "scoring")
GENERATION_LOST_ERROR = "the process serving it stopped"  # + why: no heartbeat for N s
INTERRUPTED_ERROR = "the process running it stopped"  # + why: no heartbeat for N s (lease expired)
MAX_ERROR_CHARS = 1000
LOG_LEVELS = ("info", "warning", "error")
MAX_LOG_CHARS = 2000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class StoreUnavailable(ValueError):
    """The store's URL cannot be used: misspelt, for a driver that is not installed, or a database that cannot be
    reached or refuses the credentials. Raised when a Store opens, before anything is read or written."""


class LeaseLost(ValueError):
    """This process executed a run whose lease another process found expired (and marked the run interrupted)."""


# --------------------------------------------------------------------------------------- schema


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite itself keeps no time zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware (UTC) datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class NulFreeText(TypeDecorator):
    """Text that PostgreSQL can hold: it refuses NUL characters in text, which a model's generation may contain,
    so there they are stored as U+FFFD (the replacement character). Other backends keep them as they are."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is not None and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


class NulFreeString(NulFreeText):
    """A String(length) with NulFreeText's NUL handling (run names are the user's text)."""

    impl = String


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(NulFreeString(200))
    method: Mapped[str] = mapped_column(String(32), default="ppo")
    status: Mapped[str] = mapped_column(String(16), index=True)
    config_yaml: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(NulFreeText)
    traceback: Mapped[str | None] = mapped_column(NulFreeText)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    summary: Mapped[str | None] = mapped_column(Text)  # JSON: the before/after numbers
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    device: Mapped[str | None] = mapped_column(String(64))
    # Lease (revision 0002): who executes the run and when it last said so.
    owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the owner reported last (written with the heartbeat): phase, a one-line message, recent step seconds.
    phase: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(NulFreeText)
    step_times: Mapped[str | None] = mapped_column(Text)  # JSON list of floats, the last STEP_TIMES_KEPT
    stop_reason: Mapped[str | None] = mapped_column(NulFreeText)  # a stop the user did not ask for (worker shutdown)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # higher is claimed first
    # Revision 0004: the login user who started the run (None: no login, or a run from before owners).
    owner_user: Mapped[str | None] = mapped_column(String(320))


class Worker(Base):
    """A worker process serving this store (engine.worker); its row is removed when it exits cleanly."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    current_run: Mapped[str | None] = mapped_column(String(32))


def _run_fk() -> Any:
    return ForeignKey("runs.id", ondelete="CASCADE")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        Index("ix_metrics_run_key_step", "run_id", "key", "step"),  # one curve, in step order
        Index("ix_metrics_run_id_id", "run_id", "id"),  # incremental polling: id > since_id
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    step: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)  # unix seconds


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    step: Mapped[int] = mapped_column(Integer)
    idx: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(NulFreeText)
    response: Mapped[str] = mapped_column(NulFreeText)
    reward: Mapped[float | None] = mapped_column(Float)
    scores: Mapped[str] = mapped_column(Text, default="{}")  # JSON object


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_run_phase_idx", "run_id", "phase", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    phase: Mapped[str] = mapped_column(String(16))
    idx: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(NulFreeText)
    response: Mapped[str] = mapped_column(NulFreeText)
    toxicity: Mapped[float | None] = mapped_column(Float)
    scores: Mapped[str] = mapped_column(Text, default="{}")  # JSON object


class Score(Base):
    """A later score of one hold-out response (run, phase, idx) by a named scorer; one value per key."""

    __tablename__ = "scores"
    __table_args__ = (UniqueConstraint("run_id", "scorer", "phase", "idx", name="uq_scores_run_scorer_phase_idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    scorer: Mapped[str] = mapped_column(String(200))
    phase: Mapped[str] = mapped_column(String(16))
    idx: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Alarm(Base):
    """A reward-hacking alarm that fired during training (engine.alarms): its evidence are (step, idx) samples."""

    __tablename__ = "alarms"
    __table_args__ = (Index("ix_alarms_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    since_step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of {"step", "idx"}: rows of samples
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Generation(Base):
    """A policy-playground request (engine.playground): k samples of one prompt from a run's base model and from one
    of its checkpoints, generated and scored by a worker process; its progress and, when done, the result."""

    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk(), index=True)
    checkpoint_step: Mapped[int] = mapped_column(Integer)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(NulFreeText)
    settings: Mapped[str] = mapped_column(Text)  # JSON: k, temperature, top_p, top_k, max_new_tokens, seed
    status: Mapped[str] = mapped_column(String(16), index=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(NulFreeText)
    error: Mapped[str | None] = mapped_column(NulFreeText)
    result: Mapped[str | None] = mapped_column(NulFreeText)  # JSON: {"base": [...], "trained": [...]}
    owner: Mapped[str | None] = mapped_column(String(200))  # the process serving it
    owner_user: Mapped[str | None] = mapped_column(String(320))  # the login user who asked (None: no login)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RunLog(Base):
    """A line of a run's log (revision 0006): a phase it entered, what a long phase is doing, a warning or an
    error, with the time it was written; kept after the run's process exits."""

    __tablename__ = "run_logs"
    __table_args__ = (Index("ix_run_logs_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(32), _run_fk())
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(String(16))  # info | warning | error
    phase: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(NulFreeText)


# ---------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """A run as read from the store (a snapshot: re-read it to see later changes)."""

    id: str
    name: str
    method: str
    status: str
    config_yaml: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    traceback: str | None
    step: int
    total_steps: int | None
    summary: dict[str, Any] | None
    cancel_requested: bool
    device: str | None
    owner: str | None = None
    heartbeat_at: datetime | None = None
    phase: str | None = None
    message: str | None = None
    step_times: tuple[float, ...] = ()
    priority: int = 0
    owner_user: str | None = None  # the login user who started it (engine.owners); None: no login / from before

    @property
    def heartbeat_age_s(self) -> float | None:
        """Seconds since the owner's last heartbeat (None: never had one)."""
        return None if self.heartbeat_at is None else (utcnow() - self.heartbeat_at).total_seconds()

    @property
    def is_active(self) -> bool:
        """True while the run is queued or running."""
        return self.status in ACTIVE_STATUSES

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (or to now while running); None if never started."""
        if self.started_at is None:
            return None
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()


@dataclass(frozen=True)
class WorkerRecord:
    """A registered worker process as read from the store."""

    id: str
    host: str
    pid: int
    device: str | None
    started_at: datetime
    heartbeat_at: datetime
    current_run: str | None

    @property
    def heartbeat_age_s(self) -> float:
        return (utcnow() - self.heartbeat_at).total_seconds()

    def is_live(self, lease_s: float) -> bool:
        """Whether its last heartbeat is within the lease timeout."""
        return self.heartbeat_age_s <= lease_s


@dataclass(frozen=True)
class CheckpointRecord:
    """One saved checkpoint of a run."""

    step: int
    path: str
    created_at: datetime


@dataclass(frozen=True)
class GenerationRecord:
    """A policy-playground request as read from the store (engine.playground); `result` once done."""

    id: str
    run_id: str
    checkpoint_step: int
    checkpoint_path: str
    prompt: str
    settings: dict[str, Any]
    status: str  # one of GENERATION_STATUSES
    done: int  # samples generated so far (both sides together)
    total: int
    message: str | None
    error: str | None
    result: dict[str, Any] | None
    owner: str | None
    owner_user: str | None
    created_at: datetime
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")


def _to_generation(g: Generation) -> GenerationRecord:
    return GenerationRecord(g.id, g.run_id, g.checkpoint_step, g.checkpoint_path, g.prompt, json.loads(g.settings),
                            g.status, g.done or 0, g.total or 0, g.message, g.error,
                            json.loads(g.result) if g.result else None, g.owner, g.owner_user, g.created_at,
                            g.heartbeat_at, g.finished_at)


def _to_record(run: Run) -> RunRecord:
    return RunRecord(
        id=run.id,
        name=run.name,
        method=run.method,
        status=run.status,
        config_yaml=run.config_yaml,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        error=run.error,
        traceback=run.traceback,
        step=run.step,
        total_steps=run.total_steps,
        summary=json.loads(run.summary) if run.summary else None,
        cancel_requested=bool(run.cancel_requested),
        device=run.device,
        owner=run.owner,
        heartbeat_at=run.heartbeat_at,
        phase=run.phase,
        message=run.message,
        step_times=tuple(json.loads(run.step_times)) if run.step_times else (),
        priority=run.priority or 0,
        owner_user=run.owner_user,
    )


# ---------------------------------------------------------------------------------- helpers


def new_run_id(now: datetime | None = None) -> str:
    """A short unique id such as "r-20261125-1a2b3c" (UTC date + 24 random bits)."""
    return f"r-{(now or utcnow()):%Y%m%d}-{secrets.token_hex(3)}"


# Something that starts like a database URL but has no "://" is a misspelt URL, not a file to create.
_URL_LIKE = re.compile(r"^(postgres(ql)?|sqlite|mysql|mariadb|oracle|mssql)([+][\w]+)?:", re.IGNORECASE)


def resolve_url(url_or_path: str | Path | None = None) -> str:
    """A SQLAlchemy URL from a URL, a plain file path, or (None) $RLAIF_LAB_DB / runs/rlaif_lab.db.

    "postgresql://" and "postgres://" mean PostgreSQL through psycopg 3 (the driver the lab installs):
    "postgresql+psycopg://". StoreUnavailable for what looks like a misspelt URL (e.g. "postgresql:/host/db")."""
    if url_or_path is None:
        url_or_path = os.environ.get(DB_ENV_VAR) or DEFAULT_DB_PATH
    if isinstance(url_or_path, str) and "://" in url_or_path:
        scheme, rest = url_or_path.split("://", 1)
        if scheme.lower() in ("postgresql", "postgres"):
            return f"postgresql+psycopg://{rest}"
        return url_or_path
    if isinstance(url_or_path, str) and _URL_LIKE.match(url_or_path):
        raise StoreUnavailable(f"store URL {_hide_password(url_or_path)!r} is misspelt: a database URL reads "
                               "scheme://user@host:port/database (e.g. postgresql+psycopg://lab@db.example:5432/lab),"
                               " a SQLite store is a file path or sqlite:///path/to.db")
    if str(url_or_path) == ":memory:":
        return "sqlite:///:memory:"
    return f"sqlite:///{Path(url_or_path).expanduser().resolve()}"


def _hide_password(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    return re.sub(r"(:/*[^:/@]+:)[^@/]*@", r"\1***@", url)  # also in a misspelt "scheme:/user:pw@host"


def _driver_problem(url: str) -> str | None:
    """Why `url`'s driver cannot be loaded (an unknown dialect, a driver package not installed), or None."""
    from sqlalchemy.exc import NoSuchModuleError

    try:
        make_url(url).get_dialect().import_dbapi()
    except NoSuchModuleError:
        return f"{make_url(url).drivername!r} is not a database SQLAlchemy knows (use sqlite or postgresql+psycopg)"
    except ImportError as exc:
        return (f"its driver is not installed ({exc.name or exc}): for PostgreSQL use postgresql+psycopg:// "
                "(pip install 'psycopg[binary]')")
    return None


def _connection_problem(exc: BaseException, url: str) -> str:
    """A one-line reason for a failed connection, naming what to check (never the password)."""
    text = " ".join(str(getattr(exc, "orig", None) or exc).split())
    low = text.lower()
    if "password authentication failed" in low or "authentication failed" in low or "no password supplied" in low:
        why = "the server refused the credentials (check the user name and password in the URL)"
    elif "does not exist" in low and "database" in low:
        why = "the database does not exist on that server (create it first: createdb NAME)"
    elif "role" in low and "does not exist" in low:
        why = "the server has no such user (check the user name in the URL)"
    elif "connection refused" in low or "could not connect" in low or "timeout" in low or "timed out" in low:
        why = "nothing answers at that host and port (is the server running, and the host / port right?)"
    elif "name or service not known" in low or "name resolution" in low or "failed to resolve" in low or "could not translate host name" in low or "nodename" in low:
        why = "the host name does not resolve (check its spelling)"
    else:
        why = "the database refused the connection"
    return f"{why}: {text[:300]}"


def lease_timeout_s() -> float:
    """The lease timeout: $RLAIF_LAB_LEASE_S seconds, default 30."""
    raw = os.environ.get(LEASE_ENV_VAR)
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${LEASE_ENV_VAR} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"${LEASE_ENV_VAR} must be > 0, got {raw!r}")
    return value


def new_owner_id(kind: str = "proc") -> str:
    """An owner / worker id naming the process: "<kind>-<host>-<pid>-<4 hex>"."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and small arrays know how to become Python numbers or lists
    for attr in ("item", "tolist"):
        if hasattr(obj, attr):
            return getattr(obj, attr)()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, default=_json_default)
    except TypeError as e:
        raise ValueError(f"{what} is not JSON serialisable: {e}") from None


def _finite_or_none(value: Any, what: str) -> float | None:
    """float(value), with NaN/inf mapped to None (stored as NULL)."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    return x if math.isfinite(x) else None


def _as_step(step: Any, what: str = "step") -> int:
    if isinstance(step, bool) or not hasattr(step, "__index__"):
        raise ValueError(f"{what} must be an integer, got {step!r}")
    step = int(step)
    if step < 0:
        raise ValueError(f"{what} must be >= 0, got {step}")
    return step


def _one_line(text: str | None) -> str | None:
    if text is None:
        return None
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 1] + "…"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # persistent in the file; readers and the writer coexist
    cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL against a process crash, much faster
    cur.execute("PRAGMA foreign_keys=ON")  # per connection; needed for ON DELETE CASCADE
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


# ------------------------------------------------------------------------------------ store


class Store:
    """Runs and everything they produce, in one SQL database; safe to share across threads.

    `Store()` opens $RLAIF_LAB_DB or runs/rlaif_lab.db (relative to the working directory);
    `Store("path/to.db")` or `Store("sqlite:///path/to.db")` a SQLite file; any other SQLAlchemy
    URL works too. The schema is created, or upgraded, on open (`migrated_from`: the revision it was at, None for
    a new or pre-migration store). Call `close()` (or use `with Store(...)`) to release
    connections. `Store(":memory:")` is for single-threaded use only (SQLite gives each thread its
    own empty in-memory database); use a file when a worker thread shares the store.

    `owner` names this process in the runs it executes (default: "proc-<host>-<pid>-<hex>", see new_owner_id);
    `lease_s` is the lease timeout (default $RLAIF_LAB_LEASE_S or 30 s); heartbeats go every lease_s / 6 (≤ 5 s).
    """

    def __init__(self, url_or_path: str | Path | None = None, owner: str | None = None,
                 lease_s: float | None = None) -> None:
        self.owner = owner or new_owner_id()
        self.lease_s = float(lease_s) if lease_s is not None else lease_timeout_s()
        if not self.lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s!r}")
        self.heartbeat_s = min(5.0, max(0.05, self.lease_s / 6))
        # The runs this Store executes (run id -> what the next heartbeat writes), and those whose lease was lost.
        self._owned: dict[str, dict[str, Any]] = {}
        self._step_times: dict[str, list[float]] = {}
        self._lost: set[str] = set()
        self._handed: set[str] = set()  # runs given to another process (hand_over), heartbeated until it adopts them
        self._worker_device: str | None = None
        self._worker_registered = False
        self._beat_lock = threading.Lock()
        self._beat_write_lock = threading.Lock()  # one heartbeat at a time: an older snapshot never lands last
        self._beat_wake = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self.url = resolve_url(url_or_path)
        shown = _hide_password(self.url)
        try:
            url = make_url(self.url)
        except Exception as exc:  # sqlalchemy.exc.ArgumentError: not a URL at all
            raise StoreUnavailable(f"store URL {shown!r} cannot be read: {exc}") from None
        problem = _driver_problem(self.url)
        if problem:
            raise StoreUnavailable(f"store URL {shown!r} cannot be used: {problem}")
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}  # seconds a writer waits for the lock
        else:
            kwargs["pool_pre_ping"] = True
            if url.get_backend_name() == "postgresql":  # an unreachable host fails in seconds, not minutes
                kwargs["connect_args"] = {"connect_timeout": 10}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.get_backend_name() != "sqlite":  # a server: reach it (and log in) before anything else happens
            try:
                with self.engine.connect():
                    pass
            except Exception as exc:
                self.engine.dispose()
                raise StoreUnavailable(f"cannot open the store at {shown}: {_connection_problem(exc, self.url)}"
                                       ) from None
        if url.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # expire_on_commit=False: objects stay readable after their (short) session ends
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        from engine.migrations import upgrade

        # Brings an older store to the newest schema; SchemaVersionError for one written by a newer version.
        self.migrated_from = upgrade(self.engine, repr(self))

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection (the store can still be used; it reconnects)."""
        self.engine.dispose()

    # ---- leases and heartbeats

    def _own(self, run_id: str) -> None:
        with self._beat_lock:
            self._owned[run_id] = {"phase": "starting", "message": ""}
            self._step_times[run_id] = []
            self._lost.discard(run_id)
        self._ensure_beating()

    def _disown(self, run_id: str) -> None:
        with self._beat_lock:
            self._handed.discard(run_id)
            self._owned.pop(run_id, None)
            self._step_times.pop(run_id, None)
            worker = self._worker_registered
        if worker:  # show the worker idle at once, not at its next heartbeat
            with self._write() as s:
                s.execute(update(Worker).where(Worker.id == self.owner, Worker.current_run == run_id)
                          .values(current_run=None))

    def abandon(self, run_id: str) -> None:
        """Stop heartbeating a run this Store executes without writing anything: its end could not be recorded (the
        store is read-only, the disk is full). Once its lease expires, any process marks it interrupted.

        Waits for a heartbeat being written: one that read the run before this call could otherwise land after it.
        """
        with self._beat_write_lock, self._beat_lock:
            self._handed.discard(run_id)
            self._owned.pop(run_id, None)
            self._step_times.pop(run_id, None)

    def owned_runs(self) -> list[str]:
        """The runs this Store executes now (it heartbeats them)."""
        with self._beat_lock:
            return list(self._owned)

    def lease_lost(self, run_id: str) -> bool:
        """True when another process marked a run this Store executed as interrupted (its heartbeat came too late)."""
        with self._beat_lock:
            return run_id in self._lost

    def _ensure_beating(self) -> None:
        with self._beat_lock:
            if self._beat_thread is None or not self._beat_thread.is_alive():
                # Daemonic: when the process dies, its heartbeats stop, and that is how others learn of it.
                self._beat_thread = threading.Thread(target=self._beat_loop, name="store-heartbeat", daemon=True)
                self._beat_thread.start()

    def _beat_loop(self) -> None:
        failing = False
        while True:
            with self._beat_lock:
                if not self._owned and not self._worker_registered:
                    self._beat_thread = None
                    return
            try:
                self.beat()
                if failing:
                    log.warning("heartbeats to %r are written again", self)
                failing = False
            except Exception as exc:  # e.g. the database is locked or read-only for a while: try again next time
                if not failing:  # one traceback per outage, not one per heartbeat
                    log.warning("heartbeat to %r failed (%s: %s); retrying every %g s", self, type(exc).__name__,
                                exc, self.heartbeat_s, exc_info=True)
                failing = True
            self._beat_wake.wait(self.heartbeat_s)
            self._beat_wake.clear()

    def beat(self) -> None:
        """Write one heartbeat now: for every run this Store executes (with its latest progress) and its worker row.

        The heartbeat thread calls it every `heartbeat_s`; a run whose row is no longer "running" under this owner
        has lost its lease (another process marked it interrupted): it is dropped and `lease_lost` says so.
        """
        with self._beat_write_lock:
            self._beat()

    def _beat(self) -> None:
        now = utcnow()
        with self._beat_lock:
            owned = {run_id: dict(values) for run_id, values in self._owned.items()}
            worker = self._worker_registered
        lost = []
        with self._write() as s:
            for run_id, values in owned.items():
                done = s.execute(
                    update(Run).where(Run.id == run_id, Run.owner == self.owner, Run.status == "running")
                    .values(heartbeat_at=now, **values).execution_options(synchronize_session=False)
                ).rowcount
                if not done:
                    lost.append(run_id)
            if worker:
                current = next(iter(owned), None)
                done = s.execute(
                    update(Worker).where(Worker.id == self.owner).values(heartbeat_at=now, current_run=current)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if not done:  # pruned meanwhile (it was silent for long): register again
                    s.add(self._worker_row(now, current))
        with self._beat_lock:
            for run_id in lost:
                if run_id in self._handed:  # adopted by the process it was handed to: its lease now, not ours
                    self._let_go(run_id)
                    continue
                if run_id in self._owned:  # not finished meanwhile by this process: the lease is gone
                    self._owned.pop(run_id)
                    self._lost.add(run_id)
                    log.error("run %s: lease lost (marked interrupted by another process); stopping it", run_id)

    def note_progress(self, run_id: str, phase: str | None = None, message: str | None = None,
                      step_time: float | None = None) -> None:
        """Remember a run's phase, message and (for a finished training step) its seconds; the next heartbeat
        writes them, and a new phase wakes the heartbeat at once. Ignored for runs this Store does not execute."""
        wake = False
        with self._beat_lock:
            pending = self._owned.get(run_id)
            if pending is None:
                return
            if phase is not None:
                wake = phase != pending.get("phase")
                pending["phase"] = str(phase)[:32]
            if message is not None:
                pending["message"] = _one_line(message)
            if step_time is not None and math.isfinite(step_time) and step_time >= 0:
                times = self._step_times.setdefault(run_id, [])
                times.append(round(float(step_time), 4))
                del times[:-STEP_TIMES_KEPT]
                pending["step_times"] = json.dumps(times)
        if wake:
            self._beat_wake.set()

    def claim_run(self, run_id: str | None = None, device: str | None = None) -> RunRecord | None:
        """Take a queued run to execute, atomically: this Store becomes its owner and heartbeats it.

        `run_id` None: the next queued run (highest priority, then oldest), or None when none is queued; two
        processes claiming at once never get the same run. With `run_id`: that run, or ValueError when it is not
        queued (KeyError when there is none).
        """
        for _ in range(50):  # lost a race for the head of the queue: try the next one
            with self._write() as s:
                if run_id is None:
                    # FOR UPDATE SKIP LOCKED on PostgreSQL (rows others are claiming are skipped); nothing on SQLite,
                    # where the conditional UPDATE below is what makes the claim atomic.
                    candidate = s.execute(
                        select(Run.id).where(Run.status == "queued")
                        .order_by(Run.priority.desc(), Run.created_at, Run.id).limit(1)
                        .with_for_update(skip_locked=True)
                    ).scalar()
                    if candidate is None:
                        return None
                else:
                    candidate = run_id
                values = self._running_values()
                if device is not None:
                    values["device"] = str(device)
                done = s.execute(
                    update(Run).where(Run.id == candidate, Run.status == "queued").values(**values)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if done and self._worker_registered:
                    s.execute(update(Worker).where(Worker.id == self.owner).values(current_run=candidate))
            if done:
                self._own(candidate)
                return self.get_run(candidate)
            if run_id is not None:
                status = self.get_run(run_id).status  # KeyError when there is no such run
                raise ValueError(f"run {run_id} is {status}: only a queued run can be claimed")
        return None

    def hand_over(self, run_id: str) -> None:
        """Give a run this Store claimed to another process (a Ray task) that will `adopt_run` it: this Store keeps
        heartbeating it until then (a run waiting for a node keeps its lease), then stops without complaint."""
        with self._beat_lock:
            if run_id in self._owned:
                self._handed.add(run_id)

    def handed_over(self, run_id: str, confirm: bool = False) -> bool:
        """Whether a run this Store handed over is still waiting to be adopted (it still heartbeats it).

        Without `confirm` this is what the last heartbeat saw: a run adopted since then still counts as waiting.
        `confirm=True` reads the run's row: a run another process now owns (or that ended) is let go and is no
        longer handed over; use it where the answer decides something (did a dead task ever start its run?)."""
        with self._beat_lock:
            if not (run_id in self._handed and run_id in self._owned):
                return False
        if not confirm:
            return True
        try:
            record = self.get_run(run_id)
        except KeyError:  # deleted meanwhile
            record = None
        if record is not None and record.status == "running" and record.owner == self.owner:
            return True
        with self._beat_lock:  # adopted (or ended) since the last heartbeat: its lease is not ours any more
            self._let_go(run_id)
        return False

    def _let_go(self, run_id: str) -> None:
        """Stop heartbeating a handed-over run another process now owns (call with _beat_lock held)."""
        self._handed.discard(run_id)
        self._owned.pop(run_id, None)
        self._step_times.pop(run_id, None)

    def adopt_run(self, run_id: str, from_owner: str, device: str | None = None) -> RunRecord | None:
        """Take over the lease of a running run from `from_owner` (the dispatcher that claimed it and handed it
        over), atomically: this Store becomes its owner and heartbeats it. None when the run is no longer running
        under `from_owner` (cancelled meanwhile, or its lease expired): then nothing changes."""
        values: dict[str, Any] = {"owner": self.owner, "heartbeat_at": utcnow(), "phase": "starting"}
        if device is not None:
            values["device"] = str(device)
        with self._write() as s:
            done = s.execute(
                update(Run).where(Run.id == run_id, Run.status == "running", Run.owner == from_owner)
                .values(**values).execution_options(synchronize_session=False)).rowcount
            if done and self._worker_registered:
                s.execute(update(Worker).where(Worker.id == self.owner).values(current_run=run_id))
        if not done:
            return None
        self._own(run_id)
        return self.get_run(run_id)

    def _running_values(self) -> dict[str, Any]:
        now = utcnow()
        return {"status": "running", "started_at": now, "owner": self.owner, "heartbeat_at": now,
                "phase": "starting", "message": "", "step_times": None, "stop_reason": None}

    def expire_leases(self, lease_s: float | None = None) -> list[str]:
        """Mark "interrupted" every running run of another owner whose heartbeat is older than the lease timeout
        (default this Store's `lease_s`); returns their ids. Safe to call from any process, any time."""
        lease_s = self.lease_s if lease_s is None else float(lease_s)
        now = utcnow()
        cutoff = now - timedelta(seconds=lease_s)
        # A run from before leases existed has no heartbeat: its start (or creation) stands in for it.
        last_sign = func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at)
        stale = (Run.status == "running", last_sign < cutoff, or_(Run.owner.is_(None), Run.owner != self.owner))
        expired = []
        with self._write() as s:
            for run_id, owner, last, step in s.execute(select(Run.id, Run.owner, last_sign, Run.step).where(*stale)):
                last = last if isinstance(last, datetime) else None
                age = f"{(now - last.replace(tzinfo=timezone.utc)).total_seconds():.0f} s" if last else "long"
                error = (f"{INTERRUPTED_ERROR}: {owner or 'its process'} sent no heartbeat for {age} (lease "
                         f"{lease_s:g} s), at step {step}")
                done = s.execute(
                    update(Run).where(Run.id == run_id, *stale)
                    .values(status="interrupted", error=error, finished_at=now, phase="interrupted")
                    .execution_options(synchronize_session=False)
                ).rowcount
                if done:
                    expired.append(run_id)
        if expired:
            log.warning("lease expired: marked %s interrupted", ", ".join(expired))
        return expired

    # ---- workers

    def _worker_row(self, now: datetime, current: str | None = None) -> Worker:
        return Worker(id=self.owner, host=socket.gethostname(), pid=os.getpid(), device=self._worker_device,
                      started_at=now, heartbeat_at=now, current_run=current)

    def register_worker(self, device: str | None = None) -> str:
        """Register this process as a worker (id = `owner`), heartbeated with its runs until `unregister_worker`.

        Rows of workers silent for more than an hour are dropped on the way."""
        now = utcnow()
        self._worker_device = device
        with self._write() as s:
            s.execute(delete(Worker).where(Worker.heartbeat_at < now - timedelta(hours=1)))
            s.execute(delete(Worker).where(Worker.id == self.owner))
            s.add(self._worker_row(now))
        with self._beat_lock:
            self._worker_registered = True
        self._ensure_beating()
        return self.owner

    def unregister_worker(self) -> None:
        """Remove this process's worker row (a clean exit).

        Waits for a heartbeat being written: one that read "registered" before this call would find the row gone
        and register it again (CI saw a finished Ray task's row come back)."""
        with self._beat_write_lock:
            with self._beat_lock:
                self._worker_registered = False
            with self._write() as s:
                s.execute(delete(Worker).where(Worker.id == self.owner))

    def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker (live or silent), oldest first."""
        with self._session() as s:
            rows = s.scalars(select(Worker).order_by(Worker.started_at, Worker.id)).all()
            return [WorkerRecord(w.id, w.host, w.pid, w.device, w.started_at, w.heartbeat_at, w.current_run)
                    for w in rows]

    def live_workers(self, lease_s: float | None = None) -> list[WorkerRecord]:
        """The workers whose heartbeat is within the lease timeout."""
        lease_s = self.lease_s if lease_s is None else float(lease_s)
        return [w for w in self.list_workers() if w.is_live(lease_s)]

    # ---- internals

    def _write(self) -> AbstractContextManager[Session]:
        """A session whose transaction commits when the `with` block ends (rolls back on error)."""
        return self._session.begin()

    @staticmethod
    def _require_run(s: Session, run_id: str) -> None:
        if s.execute(select(Run.id).where(Run.id == run_id)).first() is None:
            raise KeyError(f"no run with id {run_id!r}")

    def _insert_rows(self, table: type[Base], run_id: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows of one run in one committed transaction (a single executemany)."""
        if not rows:
            with self._session() as s:
                self._require_run(s, run_id)
            return
        try:
            with self._write() as s:
                # Core insert on the session's connection: no ORM bookkeeping on the hot path, and
                # the foreign key (not an extra SELECT) tells us when the run does not exist.
                s.connection().execute(insert(table.__table__), rows)
        except IntegrityError:
            with self._session() as s:
                self._require_run(s, run_id)  # KeyError if the run is gone
            raise

    @staticmethod
    def _frame(s: Session, stmt: Any, columns: list[str]) -> pd.DataFrame:
        """Run a Core select and return its rows as a DataFrame."""
        import pandas as pd

        # Plain tuples: pandas builds a frame from them ~7x faster than from SQLAlchemy Rows.
        rows = [tuple(r) for r in s.connection().execute(stmt)]
        return pd.DataFrame.from_records(rows, columns=columns)

    # ---- runs

    def create_run(
        self,
        config_yaml: str,
        name: str | None = None,
        method: str = "ppo",
        total_steps: int | None = None,
        priority: int = 0,
        owner_user: str | None = None,
    ) -> str:
        """Add a queued run and return its id; workers claim higher `priority` first, then the oldest.
        `owner_user`: the login user starting it (None without login)."""
        if not isinstance(config_yaml, str):
            raise ValueError(f"config_yaml must be a str, got {type(config_yaml).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if total_steps is not None:
            total_steps = _as_step(total_steps, "total_steps")
        for _ in range(5):  # 24 random bits a day: a collision is rare, but retry rather than fail
            now = utcnow()
            run_id = new_run_id(now)
            try:
                with self._write() as s:
                    s.add(
                        Run(
                            id=run_id,
                            name=name or run_id,
                            method=method,
                            status="queued",
                            config_yaml=config_yaml,
                            created_at=now,
                            step=0,
                            total_steps=total_steps,
                            cancel_requested=False,
                            priority=int(priority),
                            owner_user=owner_user,
                        )
                    )
                return run_id
            except IntegrityError:
                continue
        raise RuntimeError("could not allocate a unique run id after 5 tries")

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id; KeyError if there is none."""
        with self._session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(f"no run with id {run_id!r}")
            return _to_record(run)

    def list_runs(self, status: str | Iterable[str] | None = None) -> list[RunRecord]:
        """All runs (or those with the given status / statuses), newest first."""
        stmt = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for st in wanted:
                if st not in STATUSES:
                    raise ValueError(f"status must be one of {STATUSES}, got {st!r}")
            stmt = stmt.where(Run.status.in_(wanted))
        with self._session() as s:
            return [_to_record(r) for r in s.scalars(stmt)]

    def set_status(
        self,
        run_id: str,
        status: str,
        error: str | None = None,
        traceback: str | None = None,
        device: str | None = None,
    ) -> None:
        """Move a run to `status` (see TRANSITIONS); ValueError on an illegal transition.

        "running" makes this Store the run's owner (it heartbeats it from then on) and sets started_at; setting
        "running" again on a run this Store already owns (claimed with `claim_run`) changes nothing. A terminal
        status sets finished_at and ends the heartbeats; a running run is ended only by its owner (or, for a run
        from before leases, by anyone). "cancelled" of a run stopped for a reason the user did not give
        (`request_cancel(reason=...)`, e.g. its worker shutting down) is recorded as "interrupted" with that reason.
        `error` is stored as one line, `traceback` as given; `device` (e.g. "cuda:0") is recorded when given.
        LeaseLost when another process marked the run interrupted because this one's heartbeat came too late.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self.lease_lost(run_id):
            raise LeaseLost(f"run {run_id}: not set {status!r}: this process lost its lease (another process marked "
                            f"the run interrupted after no heartbeat for over {self.lease_s:g} s)")
        sources = [src for src, targets in TRANSITIONS.items() if status in targets]
        values: dict[str, Any] = {"status": status}
        if status == "running":
            values.update(self._running_values())
        if status in TERMINAL_STATUSES:
            values["finished_at"] = utcnow()
        if error is not None:
            values["error"] = _one_line(error)
        if traceback is not None:
            values["traceback"] = str(traceback)
        if device is not None:
            values["device"] = str(device)
        # Only the owner ends a running run (a run from before leases has none).
        mine = or_(Run.status != "running", Run.owner == self.owner, Run.owner.is_(None))
        with self._write() as s:
            if status == "cancelled":
                reason = s.execute(select(Run.stop_reason).where(Run.id == run_id)).scalar()
                if reason:  # stopped, but not by the user: interrupted, and resumable as such
                    values.update(status="interrupted", error=_one_line(reason))
                    sources = [src for src, targets in TRANSITIONS.items() if "interrupted" in targets]
            # A conditional UPDATE checks and moves in one statement, so two processes racing
            # (worker: queued->running, UI: queued->cancelled) cannot both win.
            done = s.execute(
                update(Run)
                .where(Run.id == run_id, Run.status.in_(sources), mine)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
            current = None if done else s.execute(select(Run.status, Run.owner).where(Run.id == run_id)).first()
        if done:
            if status == "running":
                self._own(run_id)
            elif status in TERMINAL_STATUSES:
                self._disown(run_id)
            return
        if current is None:
            raise KeyError(f"no run with id {run_id!r}")
        if status == "running" and tuple(current) == ("running", self.owner):
            return  # claimed by this Store already: the runner's own "running" is a no-op
        if current[0] == "running" and current[1] != self.owner:
            raise ValueError(f"run {run_id} is running in another process ({current[1]}): only it can set "
                             f"{status!r}; ask it to stop with request_cancel")
        raise ValueError(f"run {run_id}: illegal status transition {current[0]!r} -> {status!r}")

    def set_progress(self, run_id: str, step: int, total_steps: int | None = None) -> None:
        """Record how far the run got (and, if given, how far it will go)."""
        values: dict[str, Any] = {"step": _as_step(step)}
        if total_steps is not None:
            values["total_steps"] = _as_step(total_steps, "total_steps")
        self._update_run(run_id, values)

    def request_cancel(self, run_id: str, reason: str | None = None) -> None:
        """Flag the run for cancellation; its owner polls `is_cancel_requested` and stops it.

        `reason`: a stop the user did not ask for (e.g. "the worker received SIGTERM"): the run then ends
        "interrupted" with that reason instead of "cancelled"."""
        values: dict[str, Any] = {"cancel_requested": True}
        if reason:
            values["stop_reason"] = _one_line(reason)
        self._update_run(run_id, values)

    def is_cancel_requested(self, run_id: str) -> bool:
        """Whether the run should stop: cancellation was asked for, or this process lost the run's lease."""
        if self.lease_lost(run_id):
            return True
        with self._session() as s:
            flag = s.execute(select(Run.cancel_requested).where(Run.id == run_id)).first()
        if flag is None:
            raise KeyError(f"no run with id {run_id!r}")
        return bool(flag[0])

    def set_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """Store the run's summary (the before/after numbers) as JSON, replacing any earlier one."""
        if not isinstance(summary, dict):
            raise ValueError(f"summary must be a dict, got {type(summary).__name__}")
        self._update_run(run_id, {"summary": _dumps(summary, "summary")})

    def _update_run(self, run_id: str, values: dict[str, Any]) -> None:
        with self._write() as s:
            done = s.execute(
                update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False)
            ).rowcount
        if not done:
            raise KeyError(f"no run with id {run_id!r}")

    def delete_run(self, run_id: str) -> None:
        """Delete a run and (by cascade) its metrics, samples, evaluations, scores and checkpoint rows.

        Checkpoint files on disk are left alone. A running run must be cancelled first.
        """
        with self._write() as s:
            status = s.execute(select(Run.status).where(Run.id == run_id)).scalar()
            if status is None:
                raise KeyError(f"no run with id {run_id!r}")
            if status == "running":
                raise ValueError(f"run {run_id} is running: cancel it before deleting it")
            s.execute(delete(Run).where(Run.id == run_id))

    # ---- metrics

    def log_metrics(self, run_id: str, step: int, metrics: dict[str, Any], time: float | None = None) -> None:
        """Store one step's metrics in one transaction; NaN/inf values are stored as NULL."""
        step = _as_step(step)
        t = _time.time() if time is None else float(time)
        rows = []
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"metric keys must be non-empty strings, got {key!r}")
            rows.append(
                {
                    "run_id": run_id,
                    "step": step,
                    "key": key,
                    "value": _finite_or_none(value, f"metrics[{key!r}]"),
                    "time": t,
                }
            )
        self._insert_rows(Metric, run_id, rows)

    def metrics(self, run_id: str, keys: Iterable[str] | None = None, since_id: int | None = None) -> pd.DataFrame:
        """Metrics in long format: columns id, step, key, value, time, ordered by id.

        `since_id` returns only rows with id > since_id: poll with the largest id seen so far to
        read just what is new. (Exact on SQLite, where writes are serialised, and with one writer
        per run anywhere.)
        """
        stmt = select(Metric.id, Metric.step, Metric.key, Metric.value, Metric.time).where(Metric.run_id == run_id)
        if keys is not None:
            stmt = stmt.where(Metric.key.in_(list(keys)))
        if since_id is not None:
            stmt = stmt.where(Metric.id > int(since_id))
        with self._session() as s:
            self._require_run(s, run_id)
            df = self._frame(s, stmt.order_by(Metric.id), ["id", "step", "key", "value", "time"])
        return df.astype({"id": "int64", "step": "int64", "key": "object", "value": "float64", "time": "float64"})

    def metric_keys(self, run_id: str) -> list[str]:
        """The distinct metric keys logged for a run, sorted."""
        with self._session() as s:
            self._require_run(s, run_id)
            stmt = select(Metric.key).where(Metric.run_id == run_id).distinct().order_by(Metric.key)
            return list(s.scalars(stmt))

    def metrics_wide(self, run_id: str, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """Metrics as a table: index "step", one column per key (the last value if logged twice)."""
        keys = None if keys is None else list(keys)
        long = self.metrics(run_id, keys=keys)
        long = long.drop_duplicates(["step", "key"], keep="last")
        wide = long.pivot(index="step", columns="key", values="value").sort_index()
        wide.columns.name = None
        if keys is not None:
            wide = wide.reindex(columns=keys)
        return wide.astype("float64")

    def latest_step(self, run_id: str) -> int | None:
        """The largest step with logged metrics, or None if none were logged."""
        with self._session() as s:
            self._require_run(s, run_id)
            return s.execute(select(func.max(Metric.step)).where(Metric.run_id == run_id)).scalar()

    # ---- samples

    def add_samples(self, run_id: str, step: int, rows: list[dict[str, Any]]) -> None:
        """Store generations of one step: dicts with prompt, response, reward, scores (dict).

        `idx` defaults to the row's position in `rows`; `reward` and `scores` are optional.
        """
        step = _as_step(step)
        records = [
            {
                "run_id": run_id,
                "step": step,
                "idx": _as_step(row.get("idx", i), f"rows[{i}]['idx']"),
                "prompt": _required_text(row, "prompt", i),
                "response": _required_text(row, "response", i),
                "reward": _finite_or_none(row.get("reward"), f"rows[{i}]['reward']"),
                "scores": _dumps(row.get("scores") or {}, f"rows[{i}]['scores']"),
            }
            for i, row in enumerate(rows)
        ]
        self._insert_rows(Sample, run_id, records)

    def samples(self, run_id: str, last_n: int | None = None) -> pd.DataFrame:
        """Samples as columns id, step, idx, prompt, response, reward, scores (dict), oldest first.

        `last_n` keeps only the most recent `last_n` rows.
        """
        stmt = select(
            Sample.id,
            Sample.step,
            Sample.idx,
            Sample.prompt,
            Sample.response,
            Sample.reward,
            Sample.scores,
        ).where(Sample.run_id == run_id)
        if last_n is not None:
            stmt = stmt.order_by(Sample.id.desc()).limit(_as_step(last_n, "last_n"))
        cols = ["id", "step", "idx", "prompt", "response", "reward", "scores"]
        with self._session() as s:
            self._require_run(s, run_id)
            df = self._frame(s, stmt, cols).sort_values("id", ignore_index=True)
        df["scores"] = df["scores"].map(json.loads)
        return df.astype({"id": "int64", "step": "int64", "idx": "int64", "reward": "float64"})

    # ---- evaluations

    def add_evaluations(self, run_id: str, phase: str, rows: list[dict[str, Any]]) -> None:
        """Store scored hold-out generations for phase "before" or "after".

        Dicts with idx (default: position), prompt, response, toxicity, scores (dict, optional).
        """
        if phase not in EVAL_PHASES:
            raise ValueError(f"phase must be one of {EVAL_PHASES}, got {phase!r}")
        records = [
            {
                "run_id": run_id,
                "phase": phase,
                "idx": _as_step(row.get("idx", i), f"rows[{i}]['idx']"),
                "prompt": _required_text(row, "prompt", i),
                "response": _required_text(row, "response", i),
                "toxicity": _finite_or_none(row.get("toxicity"), f"rows[{i}]['toxicity']"),
                "scores": _dumps(row.get("scores") or {}, f"rows[{i}]['scores']"),
            }
            for i, row in enumerate(rows)
        ]
        self._insert_rows(Evaluation, run_id, records)

    def set_evaluation_scores(self, run_id: str, scores: dict[int, dict[str, Any]]) -> None:
        """Replace the `scores` dict of the run's evaluation rows given by id (e.g. a score added afterwards)."""
        with self._write() as s:
            for eid, value in scores.items():
                done = s.execute(update(Evaluation).where(Evaluation.run_id == run_id, Evaluation.id == int(eid))
                                 .values(scores=_dumps(value, f"scores[{eid}]"))
                                 .execution_options(synchronize_session=False)).rowcount
                if not done:
                    raise KeyError(f"run {run_id!r} has no evaluation row {eid}")

    def evaluations(self, run_id: str, phase: str | None = None) -> pd.DataFrame:
        """Evaluations as columns id, phase, idx, prompt, response, toxicity, scores (dict)."""
        if phase is not None and phase not in EVAL_PHASES:
            raise ValueError(f"phase must be one of {EVAL_PHASES}, got {phase!r}")
        stmt = select(
            Evaluation.id,
            Evaluation.phase,
            Evaluation.idx,
            Evaluation.prompt,
            Evaluation.response,
            Evaluation.toxicity,
            Evaluation.scores,
        ).where(Evaluation.run_id == run_id)
        if phase is not None:
            stmt = stmt.where(Evaluation.phase == phase)
        # "before" sorts ahead of "after" in the table, as in the experiment
        stmt = stmt.order_by(Evaluation.phase.desc(), Evaluation.idx, Evaluation.id)
        cols = ["id", "phase", "idx", "prompt", "response", "toxicity", "scores"]
        with self._session() as s:
            self._require_run(s, run_id)
            df = self._frame(s, stmt, cols)
        df["scores"] = df["scores"].map(json.loads)
        return df.astype({"id": "int64", "idx": "int64", "toxicity": "float64"})

    # ---- scores

    def add_scores(self, run_id: str, scorer: str, rows: list[dict[str, Any]]) -> None:
        """Store a scorer's values of hold-out responses: dicts with phase ("before" / "after"), idx and value.

        A value already stored for the same (run, scorer, phase, idx) is replaced; NaN/inf are stored as NULL.
        """
        if not isinstance(scorer, str) or not scorer:
            raise ValueError(f"scorer must be a non-empty string, got {scorer!r}")
        now = utcnow()
        records = []
        for i, row in enumerate(rows):
            phase = row.get("phase")
            if phase not in EVAL_PHASES:
                raise ValueError(f"rows[{i}]['phase'] must be one of {EVAL_PHASES}, got {phase!r}")
            records.append({"run_id": run_id, "scorer": scorer, "phase": phase,
                            "idx": _as_step(row.get("idx"), f"rows[{i}]['idx']"),
                            "value": _finite_or_none(row.get("value"), f"rows[{i}]['value']"), "created_at": now})
        if not records:
            with self._session() as s:
                self._require_run(s, run_id)
            return
        for attempt in range(2):
            try:
                with self._write() as s:
                    # Delete then insert in one transaction: a re-score replaces, and the unique key holds.
                    for phase in EVAL_PHASES:
                        idxs = [r["idx"] for r in records if r["phase"] == phase]
                        if idxs:
                            s.execute(delete(Score).where(Score.run_id == run_id, Score.scorer == scorer,
                                                          Score.phase == phase, Score.idx.in_(idxs)))
                    s.connection().execute(insert(Score.__table__), records)
                return
            except IntegrityError:
                with self._session() as s:
                    self._require_run(s, run_id)  # KeyError if the run is gone
                if attempt:  # a concurrent writer inserted the same keys between our delete and insert
                    raise

    def scores(self, run_id: str, scorer: str | None = None, phase: str | None = None) -> pd.DataFrame:
        """Stored scores as columns scorer, phase, idx, value; ordered by scorer, phase (before first), idx."""
        if phase is not None and phase not in EVAL_PHASES:
            raise ValueError(f"phase must be one of {EVAL_PHASES}, got {phase!r}")
        stmt = select(Score.scorer, Score.phase, Score.idx, Score.value).where(Score.run_id == run_id)
        if scorer is not None:
            stmt = stmt.where(Score.scorer == scorer)
        if phase is not None:
            stmt = stmt.where(Score.phase == phase)
        stmt = stmt.order_by(Score.scorer, Score.phase.desc(), Score.idx)
        with self._session() as s:
            self._require_run(s, run_id)
            df = self._frame(s, stmt, ["scorer", "phase", "idx", "value"])
        return df.astype({"scorer": "object", "phase": "object", "idx": "int64", "value": "float64"})

    # ---- checkpoints

    def add_checkpoint(self, run_id: str, step: int, path: str | Path) -> None:
        """Record that the run saved a checkpoint at `path` after `step`."""
        with self._write() as s:
            self._require_run(s, run_id)
            s.add(Checkpoint(run_id=run_id, step=_as_step(step), path=str(path), created_at=utcnow()))

    def checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """The run's checkpoints, oldest step first."""
        stmt = (
            select(Checkpoint.step, Checkpoint.path, Checkpoint.created_at)
            .where(Checkpoint.run_id == run_id)
            .order_by(Checkpoint.step, Checkpoint.id)
        )
        with self._session() as s:
            self._require_run(s, run_id)
            return [CheckpointRecord(step, path, at) for step, path, at in s.execute(stmt)]

    # ---- resume (engine.runner.execute(resume=True); the lifecycle branch has the same method without leases)

    def reopen(self, run_id: str, to: str = "running") -> None:
        """Move a failed, cancelled or interrupted run back to `running` (or `queued`, for a worker to resume it):
        its error, traceback, end time, cancel request and stop reason are cleared. `running` makes this Store its
        owner, heartbeating it, as `claim_run` does; `queued` leaves it to whichever worker claims it.
        ValueError for a run in any other state."""
        reopenable = ("failed", "cancelled", "interrupted")
        if to not in ("running", "queued"):
            raise ValueError(f"to must be 'running' or 'queued', got {to!r}")
        values: dict[str, Any] = {"status": to, "error": None, "traceback": None, "finished_at": None,
                                  "cancel_requested": False, "stop_reason": None}
        if to == "running":
            values.update({k: v for k, v in self._running_values().items() if k != "started_at"})
        else:
            values.update(owner=None, heartbeat_at=None, phase=None, message=None)
        with self._write() as s:
            done = s.execute(
                update(Run).where(Run.id == run_id, Run.status.in_(reopenable)).values(**values)
                .execution_options(synchronize_session=False)).rowcount
            current = None if done else s.execute(select(Run.status).where(Run.id == run_id)).scalar()
        if done:
            if to == "running":
                self._own(run_id)
            return
        if current is None:
            raise KeyError(f"no run with id {run_id!r}")
        raise ValueError(f"run {run_id} is {current}: only a failed, cancelled or interrupted run can be resumed")


    # ---- alarms (engine.alarms, written by the PPO method)

    def add_alarm(self, run_id: str, name: str, step: int, since_step: int, value: Any, threshold: Any,
                  message: str, evidence: list[dict[str, int]]) -> None:
        """Record an alarm that fired at `step` (its condition holding since `since_step`); `evidence` lists the
        samples that show it as {"step", "idx"} (rows of `samples`)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        ev = [{"step": _as_step(e["step"], "evidence step"), "idx": _as_step(e["idx"], "evidence idx")}
              for e in evidence]
        self._insert_rows(Alarm, run_id, [{
            "run_id": run_id, "name": name, "step": _as_step(step), "since_step": _as_step(since_step, "since_step"),
            "value": _finite_or_none(value, "value"), "threshold": _finite_or_none(threshold, "threshold"),
            "message": str(message), "evidence": _dumps(ev, "evidence"), "created_at": utcnow()}])

    def alarms(self, run_id: str) -> pd.DataFrame:
        """The run's alarms as columns id, name, step, since_step, value, threshold, message, evidence (list of
        {"step", "idx"}), in the order they fired."""
        stmt = select(Alarm.id, Alarm.name, Alarm.step, Alarm.since_step, Alarm.value, Alarm.threshold,
                      Alarm.message, Alarm.evidence).where(Alarm.run_id == run_id).order_by(Alarm.id)
        cols = ["id", "name", "step", "since_step", "value", "threshold", "message", "evidence"]
        with self._session() as s:
            self._require_run(s, run_id)
            df = self._frame(s, stmt, cols)
        df["evidence"] = df["evidence"].map(json.loads)
        return df.astype({"id": "int64", "step": "int64", "since_step": "int64", "value": "float64",
                          "threshold": "float64"})

    def alarm_counts(self) -> dict[str, int]:
        """How many alarms each run has fired (runs with none are absent): one query for the Runs page."""
        with self._session() as s:
            rows = s.execute(select(Alarm.run_id, func.count(Alarm.id)).group_by(Alarm.run_id))
            return {run_id: int(n) for run_id, n in rows}

    # ---- playground generations (engine.playground: the UI enqueues, a worker process serves)

    def create_generation(self, run_id: str, checkpoint_step: int, checkpoint_path: str, prompt: str,
                          settings: dict[str, Any], total: int, owner_user: str | None = None) -> str:
        """Queue a playground request for run `run_id`'s checkpoint; returns its id ("g-<date>-<hex>").
        KeyError when there is no such run. The caller validated the request (engine.playground.check_request)."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        for _ in range(5):
            now = utcnow()
            gen_id = f"g-{now:%Y%m%d}-{secrets.token_hex(3)}"
            row = Generation(id=gen_id, run_id=run_id, checkpoint_step=_as_step(checkpoint_step, "checkpoint_step"),
                             checkpoint_path=str(checkpoint_path), prompt=prompt,
                             settings=_dumps(settings, "settings"), status="queued", done=0,
                             total=_as_step(total, "total"), created_at=now, owner_user=owner_user)
            try:
                with self._write() as s:
                    self._require_run(s, run_id)
                    s.add(row)
                return gen_id
            except IntegrityError:  # an id collision (24 random bits a day), or the run deleted meanwhile
                with self._session() as s:
                    self._require_run(s, run_id)
        raise RuntimeError("could not allocate a unique generation id after 5 tries")

    def get_generation(self, gen_id: str) -> GenerationRecord:
        """The playground request with this id; KeyError if there is none."""
        with self._session() as s:
            g = s.get(Generation, gen_id)
            if g is None:
                raise KeyError(f"no generation request with id {gen_id!r}")
            return _to_generation(g)

    def generations(self, run_id: str | None = None, status: str | Iterable[str] | None = None,
                    limit: int | None = None) -> list[GenerationRecord]:
        """Playground requests (of one run, or all; with the given status / statuses), newest first."""
        stmt = select(Generation).order_by(Generation.created_at.desc(), Generation.id.desc())
        if run_id is not None:
            stmt = stmt.where(Generation.run_id == run_id)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for st in wanted:
                if st not in GENERATION_STATUSES:
                    raise ValueError(f"status must be one of {GENERATION_STATUSES}, got {st!r}")
            stmt = stmt.where(Generation.status.in_(wanted))
        if limit is not None:
            stmt = stmt.limit(_as_step(limit, "limit"))
        with self._session() as s:
            return [_to_generation(g) for g in s.scalars(stmt)]

    def claim_generation(self) -> GenerationRecord | None:
        """Take the oldest queued playground request to serve (status "loading", this Store its owner), atomically:
        two processes never get the same one. None when none is queued."""
        for _ in range(20):  # lost a race for the oldest: try the next one
            now = utcnow()
            with self._write() as s:
                candidate = s.execute(
                    select(Generation.id).where(Generation.status == "queued")
                    .order_by(Generation.created_at, Generation.id).limit(1).with_for_update(skip_locked=True)
                ).scalar()
                if candidate is None:
                    return None
                done = s.execute(
                    update(Generation).where(Generation.id == candidate, Generation.status == "queued")
                    .values(status="loading", owner=self.owner, heartbeat_at=now, message="loading the models")
                    .execution_options(synchronize_session=False)).rowcount
            if done:
                return self.get_generation(candidate)
        return None

    def note_generation(self, gen_id: str, status: str | None = None, done: int | None = None,
                        message: str | None = None) -> bool:
        """Progress of a request this Store serves (its heartbeat too): status (loading / generating / scoring),
        samples done, a one-line message. False when it is no longer ours to serve (expired as lost, or deleted)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if status is not None:
            if status not in GENERATION_WORKING:
                raise ValueError(f"status must be one of {GENERATION_WORKING}, got {status!r}")
            values["status"] = status
        if done is not None:
            values["done"] = _as_step(done, "done")
        if message is not None:
            values["message"] = _one_line(message)
        with self._write() as s:
            return bool(s.execute(
                update(Generation).where(Generation.id == gen_id, Generation.owner == self.owner,
                                         Generation.status.in_(GENERATION_WORKING))
                .values(**values).execution_options(synchronize_session=False)).rowcount)

    def finish_generation(self, gen_id: str, result: dict[str, Any] | None = None, error: str | None = None) -> bool:
        """End a request this Store serves: "done" with `result`, or "failed" with `error` (one line). False when
        it was no longer ours (expired as lost, or deleted). A queued request may be failed by anyone (refused)."""
        if (result is None) == (error is None):
            raise ValueError("give exactly one of result and error")
        values: dict[str, Any] = {"finished_at": utcnow(), "heartbeat_at": utcnow()}
        if result is not None:
            values.update(status="done", result=_dumps(result, "result"), message="done")
        else:
            values.update(status="failed", error=_one_line(error), message="failed")
        mine = or_(Generation.status == "queued",
                   (Generation.owner == self.owner) & Generation.status.in_(GENERATION_WORKING))
        with self._write() as s:
            return bool(s.execute(update(Generation).where(Generation.id == gen_id, mine).values(**values)
                                  .execution_options(synchronize_session=False)).rowcount)

    def expire_generations(self, lease_s: float | None = None) -> list[str]:
        """Mark "failed" every request being served by another process whose heartbeat is older than the lease
        timeout (its process died); returns their ids. Safe to call from any process, any time."""
        lease_s = self.lease_s if lease_s is None else float(lease_s)
        now = utcnow()
        stale = (Generation.status.in_(GENERATION_WORKING), Generation.heartbeat_at < now - timedelta(seconds=lease_s),
                 or_(Generation.owner.is_(None), Generation.owner != self.owner))
        expired = []
        with self._write() as s:
            for gen_id, owner in s.execute(select(Generation.id, Generation.owner).where(*stale)):
                error = (f"{GENERATION_LOST_ERROR}: {owner or 'its process'} sent no heartbeat for over {lease_s:g} s;"
                         " ask again")
                done = s.execute(update(Generation).where(Generation.id == gen_id, *stale)
                                 .values(status="failed", error=error, finished_at=now, message="failed")
                                 .execution_options(synchronize_session=False)).rowcount
                if done:
                    expired.append(gen_id)
        return expired

    # ---- the run's log (engine.run_log writes it while the run executes)

    def add_log(self, run_id: str, message: str, level: str = "info", phase: str | None = None,
                time: datetime | None = None) -> None:
        """Append a line to the run's log: `level` info / warning / error, the phase it belongs to; the message
        is kept up to MAX_LOG_CHARS characters (its line breaks too: a warning may span lines)."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {LOG_LEVELS}, got {level!r}")
        text = str(message).strip()
        if len(text) > MAX_LOG_CHARS:
            text = text[: MAX_LOG_CHARS - 1] + "…"
        self._insert_rows(RunLog, run_id, [{"run_id": run_id, "time": time or utcnow(), "level": level,
                                             "phase": None if phase is None else str(phase)[:32],
                                             "message": text}])

    def logs(self, run_id: str, since_id: int | None = None, last_n: int | None = None) -> pd.DataFrame:
        """The run's log as columns id, time (UTC datetime), level, phase, message, oldest first; `since_id`: only
        lines after that id; `last_n`: only the newest `last_n` lines."""
        stmt = select(RunLog.id, RunLog.time, RunLog.level, RunLog.phase, RunLog.message).where(
            RunLog.run_id == run_id)
        if since_id is not None:
            stmt = stmt.where(RunLog.id > int(since_id))
        if last_n is not None:
            stmt = stmt.order_by(RunLog.id.desc()).limit(_as_step(last_n, "last_n"))
        with self._session() as s:
            self._require_run(s, run_id)
            rows = [(i, t.replace(tzinfo=timezone.utc) if t is not None else None, lv, ph, m)
                    for i, t, lv, ph, m in s.connection().execute(stmt)]
        import pandas as pd

        df = pd.DataFrame.from_records(sorted(rows), columns=["id", "time", "level", "phase", "message"])
        df["phase"] = df["phase"].astype(object).where(df["phase"].notna(), None)  # None, not NaN, when unknown
        return df.astype({"id": "int64"})

    def watch_marks(self, run_id: str) -> tuple[int, int]:
        """(newest metric row id, newest log line id) of the run, 0 when none, in one query: what a page watching
        the run compares to learn whether anything was added."""
        metric = select(func.max(Metric.id)).where(Metric.run_id == run_id).scalar_subquery()
        line = select(func.max(RunLog.id)).where(RunLog.run_id == run_id).scalar_subquery()
        with self._session() as s:
            m, g = s.execute(select(metric, line)).one()
        return int(m or 0), int(g or 0)

    # ---- resume (engine.runner.execute(resume=True); engine.methods.lifecycle)

    def delete_checkpoint(self, run_id: str, path: str | Path) -> None:
        """Forget the run's checkpoint at `path` (its files were pruned)."""
        with self._write() as s:
            s.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.path == str(path)))

    def truncate_after(self, run_id: str, step: int) -> None:
        """Delete what the run wrote after `step`, in one transaction: metrics, samples and alarms of later steps, checkpoint
        records of later steps, the "after" evaluation and its scores, and the summary. A resume from the checkpoint
        at `step` then writes them again, with no duplicated or orphaned points."""
        step = _as_step(step)
        with self._write() as s:
            self._require_run(s, run_id)
            s.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step > step))
            s.execute(delete(Sample).where(Sample.run_id == run_id, Sample.step > step))
            s.execute(delete(Alarm).where(Alarm.run_id == run_id, Alarm.step > step))
            s.execute(delete(Checkpoint).where(Checkpoint.run_id == run_id, Checkpoint.step > step))
            s.execute(delete(Evaluation).where(Evaluation.run_id == run_id, Evaluation.phase == "after"))
            s.execute(delete(Score).where(Score.run_id == run_id, Score.phase == "after"))
            s.execute(update(Run).where(Run.id == run_id).values(summary=None, step=step)
                      .execution_options(synchronize_session=False))


def _required_text(row: dict[str, Any], field: str, i: int) -> str:
    if field not in row or row[field] is None:
        raise ValueError(f"rows[{i}] has no {field!r}")
    return str(row[field])
