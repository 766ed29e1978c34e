"""Bad store URLs (--db, $RLAIF_LAB_DB, the lab's start): misspelt, unreachable, wrong credentials, a driver that
is not installed. Each is a clear, specific error (engine.store.StoreUnavailable) before anything is stored or
queued, and never shows the password. Unreachable = a real closed port; wrong credentials = the real PostgreSQL
server of the session (tests/pg_server.py), which admits its password user only with the right password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store import Store, StoreUnavailable, resolve_url

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_cases() -> list:
    port = closed_port()
    return [
        pytest.param(f"postgresql+psycopg://lab:s3cret-pw@127.0.0.1:{port}/lab", "nothing answers at that host and port",
                     id="unreachable"),
        pytest.param("postgresql:/lab:s3cret-pw@db.example/lab", "is misspelt", id="misspelt-scheme"),
        pytest.param("postgres+psycopg:lab@db.example/lab", "is misspelt", id="misspelt-no-slashes"),
        pytest.param("mysql+pymysql://lab:s3cret-pw@127.0.0.1/lab", "its driver is not installed (pymysql)",
                     id="driver-not-installed"),
        pytest.param("postgresql+psycopg2://lab@127.0.0.1/lab", "its driver is not installed (psycopg2)",
                     id="psycopg2-not-installed"),
        pytest.param("postgre://lab@127.0.0.1/lab", "'postgre' is not a database SQLAlchemy knows", id="unknown-db"),
    ]


@pytest.mark.parametrize(("url", "says"), url_cases())
def test_a_bad_url_is_refused_with_the_reason_and_no_password(url, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreUnavailable) as err:
        Store(url)
    message = str(err.value)
    assert says in message, message
    assert "s3cret-pw" not in message
    assert list(tmp_path.iterdir()) == []  # no file or folder made of a misspelt URL


def test_plain_postgresql_urls_mean_psycopg():
    assert resolve_url("postgresql://lab@h:5/db") == "postgresql+psycopg://lab@h:5/db"
    assert resolve_url("postgres://lab@h/db") == "postgresql+psycopg://lab@h/db"
    assert resolve_url("postgresql+psycopg://lab@h/db") == "postgresql+psycopg://lab@h/db"


def test_wrong_credentials_and_a_missing_database_are_named(pg_server, pg_url):
    user, password = pg_server.password_user()
    host = pg_server.url.split("@", 1)[1]
    database = pg_url.rsplit("/", 1)[1]
    with pytest.raises(StoreUnavailable, match="refused the credentials") as err:
        Store(f"postgresql+psycopg://{user}:wrong-{password}@{host}/{database}")
    assert password not in str(err.value) and "***" in str(err.value)
    with pytest.raises(StoreUnavailable, match="the database does not exist"):
        Store(f"{pg_server.url}/no_such_database")
    with Store(f"postgresql+psycopg://{user}:{password}@{host}/{database}") as ok:  # the right password gets in
        assert ok.engine.url.username == user


def test_cli_and_worker_refuse_a_bad_url_before_queueing_and_leave_the_real_store_alone(tmp_path):
    """`run` with a bad --db or $RLAIF_LAB_DB queues nothing anywhere: an error line, exit 2; the store the user
    meant (here a SQLite file with a queued run) is untouched; a worker given the bad URL exits the same way."""
    real = tmp_path / "lab.db"
    with Store(real) as store:
        kept = store.create_run("a: 1", name="kept")
    cfg = tmp_path / "tiny.yaml"
    subprocess.run([sys.executable, "-m", "engine", "init", "--tiny", str(cfg)], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=120)
    bad = f"postgresql://lab:s3cret-pw@127.0.0.1:{closed_port()}/lab"
    for args, env in [(["--db", bad, "run", str(cfg)], {}), (["run", str(cfg)], {"RLAIF_LAB_DB": bad}),
                      (["worker", "--once"], {"RLAIF_LAB_DB": bad}), (["--db", "postgresql:lab@h/x", "runs"], {})]:
        out = subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=120)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        [line] = out.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith("error: ") and ("nothing answers" in line or "misspelt" in line), line
        assert "s3cret-pw" not in out.stderr + out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.db", "tiny.yaml"]  # no runs/ store made instead
    with Store(real) as store:
        assert [(r.id, r.status) for r in store.list_runs()] == [(kept, "queued")]


def test_the_lab_says_why_it_cannot_open_its_store(tmp_path, monkeypatch):
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    from app import state

    monkeypatch.setenv("RLAIF_LAB_DB", f"postgresql+psycopg://lab:s3cret-pw@127.0.0.1:{closed_port()}/lab")
    monkeypatch.setenv("RLAIF_LAB_LOCAL_WORKER", "0")
    monkeypatch.chdir(tmp_path)
    st_config.set_option("server.address", "127.0.0.1")
    state._lab.clear()
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    [error] = [e.value for e in at.error]
    assert "cannot open its store" in error and "nothing answers at that host and port" in error
    assert "s3cret-pw" not in error and "***" in error
    state._lab.clear()
