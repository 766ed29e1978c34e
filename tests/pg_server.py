"""A real PostgreSQL server for the tests: Debian's binaries, a temporary cluster on 127.0.0.1, one per session.

`start()` runs initdb + pg_ctl (as the `postgres` user when we are root: PostgreSQL refuses to run as root) in a
fresh temporary directory, on a free port, with trust authentication for the user "lab" (no password exists to
leak), fsync off (a test cluster needs no durability across an OS crash); `stop()` ends it and removes the
directory. `$RLAIF_LAB_TEST_PG` (a postgresql+psycopg://user@host:port URL without a database) uses a server
that is already running instead. `create_database` / `drop_database` give each test a fresh, empty database.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass

ENV_URL = "RLAIF_LAB_TEST_PG"
USER = "lab"
PASSWORD_USER, PASSWORD = "secured", "right-horse-battery"  # a user that must log in with a password


def pg_bin() -> str | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[-3]))
    return os.path.dirname(found[-1]) if found else (os.path.dirname(shutil.which("pg_ctl") or "") or None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    url: str  # postgresql+psycopg://lab@127.0.0.1:PORT (no database)
    directory: str | None = None  # None: an external server we did not start
    bin: str | None = None

    def _as_owner(self, *cmd: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd))

    def stop(self) -> None:
        if self.directory is None:
            return
        subprocess.run(self._as_owner(f"{self.bin}/pg_ctl", "-D", f"{self.directory}/data", "stop", "-m",
                                      "immediate", "-w"), capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)

    def admin_dsn(self) -> str:
        return self.url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def password_user(self) -> tuple[str, str]:
        """(user, password) of a user the server admits only with that password (created on first use)."""
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_USER,)).fetchone():
                conn.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        return PASSWORD_USER, PASSWORD

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database, closing any connection a killed process left open."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start() -> PgServer:
    """Start a throwaway server (see the module docstring); RuntimeError saying why when it cannot start."""
    if os.environ.get(ENV_URL):
        return PgServer(os.environ[ENV_URL].rstrip("/"))
    bindir = pg_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): "
                                "apt-get install postgresql, or set $RLAIF_LAB_TEST_PG to a running server's URL")
    directory = tempfile.mkdtemp(prefix="rlaif-pg-")
    server = PgServer("", directory, bindir)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    try:
        subprocess.run(server._as_owner(f"{bindir}/initdb", "-D", f"{directory}/data", "-A", "trust", "-U", USER,
                                        "-E", "UTF8", "--no-sync"), check=True, capture_output=True, timeout=120)
        # "lab" logs in without a password; every other user needs one (the wrong-credentials tests use PASSWORD_USER)
        with open(f"{directory}/data/pg_hba.conf", "w") as hba:
            hba.write(f"local all {USER} trust\nhost all {USER} 127.0.0.1/32 trust\n"
                      "host all all 127.0.0.1/32 scram-sha-256\n")
        for _ in range(5):  # the free port may be taken between our probe and the server's bind: another one
            port = _free_port()
            done = subprocess.run(server._as_owner(
                f"{bindir}/pg_ctl", "-D", f"{directory}/data", "-l", f"{directory}/server.log", "-w", "-t", "60",
                "-o", f"-k {directory} -h 127.0.0.1 -p {port} -F -c max_connections=200", "start"),
                capture_output=True, timeout=120)
            if done.returncode == 0:
                server.url = f"postgresql+psycopg://{USER}@127.0.0.1:{port}"
                return server
        log = open(f"{directory}/server.log").read()[-2000:] if os.path.exists(f"{directory}/server.log") else ""
        raise RuntimeError(f"PostgreSQL did not start: {done.stderr.decode(errors='replace')}\n{log}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
