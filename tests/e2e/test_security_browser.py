"""The lab as a shared server would meet it (issue 15), with real `streamlit run` processes and a real browser:

- where it listens: 127.0.0.1 by default (read from the kernel's socket table), and an error page instead of the
  lab on 0.0.0.0 unless the operator opts out;
- the judge exfiltration: a config whose judge points at a listener on 127.0.0.1 with `api_key_env` naming a
  secret of the server (or Bedrock's `endpoint_url` with the server's AWS keys) is uploaded, the Reward
  playground opened and Start pressed: the listener must receive no request at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM, ROOT, free_port, stop_workers
from tests.recording_listener import RecordingListener

pytestmark = pytest.mark.browser


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log: Path
    db: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_lab(tmp: Path, *, address: str | None = "127.0.0.1", env: dict[str, str] | None = None) -> Server:
    """`streamlit run app/serve.py` (as scripts/lab.sh) from the repository root (its .streamlit/config.toml
    applies); address None
    leaves server.address to that config file. Waits for the health endpoint."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    port, db, log = free_port(), tmp / "lab.db", tmp / "server.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RLAIF_LAB_")}
    full_env.update({"RLAIF_LAB_DB": str(db), "PYTHONUNBUFFERED": "1", **(env or {})})
    cmd = [sys.executable, "-m", "streamlit", "run", "app/serve.py", "--server.headless", "true",
           "--server.port", str(port)]
    if address is not None:
        cmd += ["--server.address", address]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return Server(url, port, proc, log, db)
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()
    if server.db.exists():
        stop_workers(server.db)  # the lab's worker outlives its server by design


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on `port`, from `ss -ltn` (or /proc/net/tcp{,6} without ss)."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
        return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]
    except (FileNotFoundError, subprocess.CalledProcessError):
        found = []
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(name).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                    found.append(addr)
        return found


@pytest.fixture(scope="module")
def chromium(browser):
    """conftest's session browser (one sync Playwright per process: a second one cannot start beside it)."""
    return browser


def page_text(browser, url: str, wait_for: str) -> str:
    context = browser.new_context()
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(url)
    pg.get_by_text(wait_for).first.wait_for()
    text = pg.locator("[data-testid='stApp']").inner_text()
    context.close()
    return text


# ---- where the lab listens ---------------------------------------------------------------------------------


def test_default_bind_is_loopback_only(tmp_path, chromium):
    server = start_lab(tmp_path, address=None)  # no --server.address: .streamlit/config.toml decides
    try:
        addresses = listening_addresses(server.port)
        print(f"\nss -ltn for port {server.port}: {addresses}")
        assert addresses and all(a in ("127.0.0.1", "0100007F") for a in addresses), addresses
        assert "Network URL" not in server.log_text()
        assert "Launch a run" in page_text(chromium, server.url, "Launch a run")
    finally:
        stop(server)


def test_all_interfaces_without_opt_out_refuses(tmp_path, chromium):
    server = start_lab(tmp_path, address="0.0.0.0")
    try:
        assert "0.0.0.0" in listening_addresses(server.port) or "*" in listening_addresses(server.port)
        text = page_text(chromium, server.url, "The lab refuses to serve")
        assert "RLAIF_LAB_ALLOW_UNAUTHENTICATED_NETWORK" in text
        assert "Launch a run" not in text
        # no page of the lab is reachable by its URL either
        assert "Reward playground" not in page_text(chromium, f"{server.url}/playground", "The lab refuses to serve")
        deadline = time.monotonic() + 30
        while "refuses to serve" not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "RLAIF Lab refuses to serve" in server.log_text()
        # nor the Live page's watch route (app/serve.py), for a run that exists
        from engine.store import Store

        with Store(server.db) as store:
            run_id = store.create_run("name: x\n", name="x")
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{server.url}/api/live-signature?run={run_id}", timeout=10)
        assert exc.value.code == 403
    finally:
        stop(server)


def test_all_interfaces_with_explicit_opt_out_serves(tmp_path, chromium):
    server = start_lab(tmp_path, address="0.0.0.0", env={"RLAIF_LAB_ALLOW_UNAUTHENTICATED_NETWORK": "1"})
    try:
        assert "Launch a run" in page_text(chromium, server.url, "Launch a run")
    finally:
        stop(server)


# ---- the judge exfiltration (issue 15's first critical item) -----------------------------------------------

FAKE_SECRET = "sk-fake-lab-secret-0123456789"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0000", "AWS_SECRET_ACCESS_KEY": "fake/secret/access/key",
            "AWS_SESSION_TOKEN": "fake-session-token", "AWS_DEFAULT_REGION": "us-east-1"}
# The operator allows judges, but elsewhere: the listener's endpoint is on no list.
OPERATOR_SETTINGS = """
[[judges.openai]]
base_url = "http://127.0.0.1:1/v1"
api_key_env = "OPENAI_API_KEY"
models = ["*"]

[[judges.bedrock]]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:1"
models = ["*"]
"""


@pytest.fixture(scope="module")
def exposed_lab(tmp_path_factory):
    """A lab server whose environment holds a secret and AWS credentials (fake ones)."""
    tmp = tmp_path_factory.mktemp("exposed_lab")
    settings = tmp / "lab_settings.toml"
    settings.write_text(OPERATOR_SETTINGS)
    server = start_lab(tmp, env={"LAB_FAKE_SECRET": FAKE_SECRET, **FAKE_AWS, "RLAIF_LAB_SETTINGS": str(settings)})
    yield server
    stop(server)


def upload_then_playground_then_start(browser, server: Server, cfg, tmp_path: Path, refusal: str) -> str:
    """Upload `cfg` on the Launch page, open the Reward playground (which scores the form's backends at once),
    come back and press Start. Returns the page text of the Launch page at the end."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(120_000)
    pg.goto(server.url)
    pg.wait_for_selector("[data-testid='stApp'] h1")
    path = tmp_path / "exfiltrate.yaml"
    cfg.save(path)
    pg.get_by_text("Load, clone or save a config").click()
    pg.locator(".st-key-upload-config input[type=file]").set_input_files(str(path))
    pg.get_by_text("Loaded exfiltrate.yaml").wait_for()
    pg.get_by_text(refusal).first.wait_for()  # the Launch page marks the refused field
    expect(pg.locator(".st-key-start-run button")).to_be_disabled()

    pg.locator("[data-testid='stSidebarNav']").get_by_text("Reward playground").click()
    pg.get_by_role("heading", name="Reward playground").wait_for()
    # the errors are drawn after every backend has been scored: once one shows, all calls have been made
    pg.get_by_text(refusal).first.wait_for()

    pg.locator("[data-testid='stSidebarNav']").get_by_text("Launch", exact=True).click()
    pg.get_by_role("heading", name="Launch a run").wait_for()
    pg.locator(".st-key-start-run button").click(force=True)
    pg.get_by_text(refusal).first.wait_for()
    text = pg.locator("[data-testid='stApp']").inner_text()
    context.close()
    return text


def exfiltration_config(backend):
    from engine.config import RewardBackendSettings, RunConfig

    cfg = RunConfig(name="exfiltrate")
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [backend]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    return cfg


def test_openai_judge_cannot_send_the_servers_secret(exposed_lab, chromium, tmp_path):
    from engine.config import RewardBackendSettings

    with RecordingListener() as ear:
        judge = RewardBackendSettings(kind="openai_judge", options={
            "base_url": ear.url + "/v1", "model": "any", "api_key_env": "LAB_FAKE_SECRET"})
        text = upload_then_playground_then_start(chromium, exposed_lab, exfiltration_config(judge), tmp_path,
                                                 "not an endpoint this lab allows")
        assert ear.heard == [], ear.heard
    assert FAKE_SECRET not in text
    with exposed_lab_store(exposed_lab) as store:
        assert store.list_runs() == []


def test_bedrock_judge_cannot_sign_requests_to_another_endpoint(exposed_lab, chromium, tmp_path):
    from engine.config import RewardBackendSettings

    with RecordingListener() as ear:
        judge = RewardBackendSettings(kind="bedrock_judge", options={
            "endpoint_url": ear.url, "region": "us-east-1", "model_id": "anthropic.claude-3-haiku-20240307-v1:0"})
        upload_then_playground_then_start(chromium, exposed_lab, exfiltration_config(judge), tmp_path,
                                          "not an endpoint this lab allows")
        assert ear.heard == [], ear.heard
    with exposed_lab_store(exposed_lab) as store:
        assert store.list_runs() == []


def exposed_lab_store(server: Server):
    from engine.store import Store

    return Store(server.db)


def test_uploaded_alias_bomb_and_binary_file_get_field_errors(exposed_lab, chromium, tmp_path):
    from tests.test_bad_inputs import ALIAS_BOMB

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(exposed_lab.url)
    pg.wait_for_selector("[data-testid='stApp'] h1")
    pg.get_by_text("Load, clone or save a config").click()
    for name, content, expected in (("bomb.yaml", ALIAS_BOMB.encode(), "aliases (*name) are not accepted"),
                                    ("binary.yaml", b"\x7fELF\x02\x01\x01\x00" * 64, "is a binary file")):
        path = tmp_path / name
        path.write_bytes(content)
        # Wait for the previous upload's rerun to finish drawing: until then Streamlit keeps the last run's elements
        # on the page, marked stale, and the uploader can be there twice (seen in CI on a loaded machine).
        pg.wait_for_function("() => document.querySelectorAll('[data-stale=\"true\"]').length === 0")
        pg.locator(".st-key-upload-config input[type=file]").set_input_files(str(path))
        pg.get_by_text(f"{name} is not a valid run config").wait_for()
        pg.get_by_text(expected).wait_for()
    assert "Traceback" not in pg.locator("[data-testid='stApp']").inner_text()
    context.close()
