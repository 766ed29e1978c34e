"""Serving a team (issue 15): Debian's nginx as the authenticating proxy in front of a real `streamlit run` on
loopback, and a real browser per user. The proxy checks each user's password (HTTP basic auth here; any nginx auth
works the same way), names the user in X-Lab-User and adds the shared secret the lab trusts that header with.

User A (alice) starts a run in the browser: it records her as its owner. User B (bob) sees it and cannot cancel or
delete it (engine.api refuses, the page says why); alice cancels her own run; the admin deletes it. A browser that
goes around the proxy to the lab's port, claiming to be the admin in X-Lab-User, gets no lab; one that sends a
forged X-Lab-User through the proxy stays who the proxy says it is.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from engine.store import Store
from tests.e2e.conftest import free_port
from tests.e2e.test_lab_browser import tiny_config
from tests.e2e.test_security_browser import start_lab, stop

pytestmark = pytest.mark.browser

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SECRET = "proxy-secret-for-the-test-0123456789"
USERS = {"alice@example.org": "alice-pw", "bob@example.org": "bob-pw", "lead@example.org": "lead-pw"}
ADMIN = "lead@example.org"

NGINX_CONF = """
worker_processes 1;
daemon off;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        auth_basic "RLAIF Lab";
        auth_basic_user_file {tmp}/htpasswd;
        location / {{
            proxy_pass http://127.0.0.1:{lab_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Lab-User $remote_user;          # replaces whatever the browser sent
            proxy_set_header X-Lab-Proxy-Secret "{secret}";
            proxy_set_header Authorization "";                 # the password stops at the proxy
            proxy_read_timeout 1d;
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def team_lab(tmp_path_factory, tiny_gpt2_dir):
    if not Path(NGINX).exists():
        pytest.skip("no nginx (apt-get install -y nginx-light)")
    tmp = tmp_path_factory.mktemp("team_lab")
    base = tmp_path_factory.getbasetemp()
    settings = tmp / "lab_settings.toml"
    settings.write_text(f'[paths]\nmodels = ["{base}"]\noutputs = ["{base}", "runs"]\n\n'
                        f'[auth]\nmode = "proxy"\nadmins = ["{ADMIN}"]\n')
    lab = start_lab(tmp, env={"RLAIF_LAB_SETTINGS": str(settings), "RLAIF_LAB_PROXY_SECRET": SECRET,
                              "RLAIF_LAB_LOCAL_WORKER": "0"})  # no worker: runs stay queued, nothing trains
    (tmp / "htpasswd").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in USERS.items()))
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, lab_port=lab.port, secret=SECRET))
    proxy = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # up when it answers (401 without a password)
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                break
        except OSError:
            pass
        if proxy.poll() is not None or time.monotonic() > deadline:
            proxy.kill()
            stop(lab)
            pytest.fail(f"nginx did not start: {(tmp / 'nginx-error.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    yield url, lab, tmp
    proxy.terminate()
    proxy.wait(15)
    stop(lab)


@pytest.fixture(scope="module")
def chromium(team_lab, chromium_browser):
    """conftest's session chromium (one sync Playwright per process)."""
    return chromium_browser


def as_user(chromium, name: str | None, headers: dict | None = None):
    """A fresh browser context logged in at the proxy as `name` (None: no credentials)."""
    creds = {"username": name, "password": USERS[name]} if name else None
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000}, http_credentials=creds,
                               extra_http_headers=headers or {})
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)  # generous: the test machine may be busy
    return ctx, pg


def signed_in(pg, url: str, name: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("[data-testid='stApp'] h1", timeout=60_000)
    expect(pg.get_by_text(f"Signed in as {name}")).to_be_visible()


def delete_from_its_row(pg, run_id: str) -> None:
    """The run's own row on the Runs page: Delete opens a popover that asks, then "Yes, delete it"."""
    pg.locator(f".st-key-run-row-{run_id}").get_by_role("button", name="Delete").click()
    pg.locator(f".st-key-delete-yes-{run_id} button").click()


def test_owner_user_and_admin_in_the_browser_behind_nginx(team_lab, chromium, tiny_gpt2_dir, tmp_path):
    url, lab, tmp = team_lab

    # alice starts a run through the proxy: she owns it
    ctx_a, pg = as_user(chromium, "alice@example.org")
    signed_in(pg, f"{url}/", "alice@example.org")
    cfg = tiny_config(tiny_gpt2_dir, "alices-run", steps=3, out=tmp_path / "runs", evaluate=False)
    path = tmp_path / "alices-run.yaml"
    cfg.save(path)
    pg.get_by_text("Load, clone or save a config").click()
    pg.locator(".st-key-upload-config input[type=file]").set_input_files(str(path))
    pg.get_by_text(f"Loaded {path.name}").wait_for()
    expect(pg.locator(".st-key-cfg-name input")).to_have_value("alices-run")
    pg.locator(".st-key-start-run button").click()
    pg.wait_for_url("**/live?run=*", timeout=180_000)
    run_id = pg.url.split("run=")[1].split("&")[0]
    pg.get_by_role("button", name="Cancel run").wait_for()  # her live page is drawn (a queued run: no worker here)
    with Store(lab.db) as store:
        assert store.get_run(run_id).owner_user == "alice@example.org"
        assert store.get_run(run_id).status == "queued"

    # bob sees it and cannot cancel it: engine.api refuses and the page says whose it is
    ctx_b, pb = as_user(chromium, "bob@example.org", headers={"X-Lab-User": ADMIN})  # a forged header too
    signed_in(pb, f"{url}/live?run={run_id}", "bob@example.org")  # the proxy's name wins, not the forged one
    expect(pb.get_by_text("Signed in as lead@example.org")).to_have_count(0)
    pb.get_by_role("button", name="Cancel run").click()  # a popover that asks first
    pb.locator(".st-key-cancel-run button").click()
    pb.get_by_text(f"run {run_id} belongs to alice@example.org: only its owner or an admin may cancel it").wait_for()
    with Store(lab.db) as store:
        assert store.get_run(run_id).status == "queued"

    # alice cancels her own run
    pg.get_by_role("button", name="Cancel run").click()
    pg.locator(".st-key-cancel-run button").click()
    pg.wait_for_function("() => document.body.innerText.includes('Status: cancelled')", timeout=180_000)
    with Store(lab.db) as store:
        assert store.get_run(run_id).status == "cancelled"

    # bob cannot delete it either
    pb.goto(f"{url}/runs")
    pb.wait_for_selector("[data-testid='stApp'] h1")
    delete_from_its_row(pb, run_id)
    pb.get_by_text(f"run {run_id} belongs to alice@example.org: only its owner or an admin may delete it").wait_for()
    with Store(lab.db) as store:
        assert store.get_run(run_id).status == "cancelled"
    pb.screenshot(path=tmp / "bob-refused.png")

    # the admin can
    ctx_l, pl = as_user(chromium, ADMIN)
    signed_in(pl, f"{url}/runs", ADMIN)
    expect(pl.get_by_text(f"Signed in as {ADMIN} · admin")).to_be_visible()
    delete_from_its_row(pl, run_id)
    # (its toast may be gone with the rerun that follows it: wait on the store instead)
    with Store(lab.db) as store:
        deadline = time.monotonic() + 60
        while store.list_runs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [r.id for r in store.list_runs()] == []
    expect(pl.get_by_text("belongs to alice@example.org")).to_have_count(0)  # no refusal for the admin
    for ctx in (ctx_a, ctx_b, ctx_l):
        ctx.close()


def test_no_lab_without_the_proxy(team_lab, chromium):
    url, lab, _ = team_lab
    # at the proxy without a password (or a wrong one): 401, the lab never sees the request
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{url}/", timeout=10)
    assert exc.value.code == 401
    # around the proxy, straight to the lab's loopback port, claiming to be the admin: no page of the lab
    ctx, pg = as_user(chromium, None, headers={"X-Lab-User": ADMIN})
    pg.goto(lab.url)
    pg.get_by_text("Sign in through the lab's login address").wait_for(timeout=60_000)
    expect(pg.locator("[data-testid='stApp'] h1")).to_have_count(0)
    expect(pg.get_by_text("Signed in as")).to_have_count(0)
    ctx.close()
    # nor the Live page's watch route (app/serve.py): refused around the proxy, even with a forged user header
    with Store(lab.db) as store:
        run_id = store.create_run("name: x\n", name="x")
    forged = urllib.request.Request(f"{lab.url}/api/live-signature?run={run_id}", headers={"X-Lab-User": ADMIN})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(forged, timeout=10)
    assert exc.value.code == 403
