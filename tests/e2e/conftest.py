"""Browser-test fixtures: a real lab server (`streamlit run app/serve.py`, as scripts/lab.sh serves it) on a free port
over a temporary store, and
Debian's chromium driven by Playwright (no browser download). Test modules here mark themselves `browser`.

The server runs in its own process and, on the first page load, starts a worker process for its store (the UI
never trains); tests read and write the same SQLite file through engine.store, as another process would. The
workers are stopped (SIGTERM) when the server is.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ (the big-run writer) imports from the repository root
    sys.path.insert(0, str(ROOT))
CHROMIUM = os.environ.get("RLAIF_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
# Screenshots go to docs/screenshots/ only when asked (they are committed); else to the test's tmp dir.
SCREENSHOTS = ROOT / "docs" / "screenshots" if os.environ.get("RLAIF_LAB_SCREENSHOTS") == "1" else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    url: str
    db: Path
    process: subprocess.Popen
    log: Path

    def store(self):
        from engine.store import Store

        return Store(self.db)


def start_server(db: Path, log: Path, port: int | None = None, env: dict | None = None,
                 script: str = "app/serve.py") -> LabServer:
    """`streamlit run <script>` over the store `db`, waited for until healthy (pytest.fail if it is not).
    script="app/serve.py" (the default) is what scripts/lab.sh serves: main.py plus the deep-link fix and the Live
    page's watch route; "app/main.py" serves the pages alone (their server-side timer)."""
    port = port or free_port()
    env = {**os.environ, "RLAIF_LAB_DB": str(db), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # generous: a loaded shared machine can take minutes to start the server
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    return LabServer(url, db, proc, log)


def stop_workers(db: Path, timeout: float = 60) -> None:
    """SIGTERM every worker registered in the store (they outlive the server by design) and wait for them."""
    import signal

    from engine.store import Store

    with Store(db) as store:
        pids = [w.pid for w in store.list_workers()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while store.live_workers() and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory) -> LabServer:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    tmp = tmp_path_factory.mktemp("lab_server")
    # The operator's folders (engine.policy): the tests' models and outputs live in pytest's temporary folder.
    settings = tmp / "lab_settings.toml"
    base = tmp_path_factory.getbasetemp()
    settings.write_text(f'[paths]\nmodels = ["{base}"]\noutputs = ["{base}", "runs"]\n')
    server = start_server(tmp / "lab.db", tmp / "server.log", env={"RLAIF_LAB_SETTINGS": str(settings)})
    yield server
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
    stop_workers(server.db)


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's chromium under the one sync Playwright of this process (a second one cannot start beside it)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def browser(lab_server, chromium_browser):
    # One visit opens the server's lab, which starts its worker process (so tests find it serving).
    first = chromium_browser.new_page()
    first.goto(lab_server.url)
    first.wait_for_selector("[data-testid='stApp'] h1", timeout=180_000)
    first.close()
    return chromium_browser


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(120_000)  # waits return at once when ready; a busy machine needs minutes
    yield pg
    context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    out = SCREENSHOTS or tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out
