"""The first minutes in a real browser, served as scripts/lab.sh serves the lab (app/serve.py), at 1400 and 1024 px:
an empty store shows the welcome panel and one click queues the tour; a deep link (/live?run=ID) loads with no
404 and no request to any host but the lab's; the Launch form keeps Start and its problems at the top.

RLAIF_LAB_SCREENSHOTS=1 also refreshes docs/screenshots/launch.png (1400 px).
"""

from __future__ import annotations

import subprocess
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import CHROMIUM, start_server

pytestmark = pytest.mark.browser
expect.set_options(timeout=60_000)  # the first page load imports the engine on a busy machine
WIDTHS = (1400, 1024)


@pytest.fixture(scope="module")
def empty_lab(tmp_path_factory):
    """A lab over an empty store that starts no worker: a queued run stays queued (nothing trains here)."""
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM}")
    tmp = tmp_path_factory.mktemp("empty_lab")
    server = start_server(tmp / "lab.db", tmp / "server.log", env={"RLAIF_LAB_LOCAL_WORKER": "0"},
                          script="app/serve.py")
    yield server
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def chromium(chromium_browser):
    """conftest's session chromium (one sync Playwright per process)."""
    return chromium_browser


class Recorder:
    """Every request and every 4xx/5xx response of one page."""

    def __init__(self, pg) -> None:
        self.requests: list[str] = []
        self.failures: list[tuple[int, str]] = []
        pg.on("request", lambda r: self.requests.append(r.url))
        pg.on("response", lambda r: r.status >= 400 and self.failures.append((r.status, r.url)))
        pg.on("requestfailed", lambda r: self.failures.append((0, r.url)))

    def foreign(self) -> list[str]:
        return [u for u in self.requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
                and urlparse(u).hostname != "127.0.0.1"]


def new_page(chromium, width: int):
    context = chromium.new_context(viewport={"width": width, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    return context, pg, Recorder(pg)


@pytest.mark.parametrize("width", WIDTHS)
def test_first_start_offers_the_tour_and_deep_links_load_clean(empty_lab, chromium, width, screenshot_dir):
    with empty_lab.store() as store:
        for run in store.list_runs():  # each width starts from an empty store
            store.delete_run(run.id)
    context, pg, rec = new_page(chromium, width)
    try:
        pg.goto(empty_lab.url)
        tour = pg.locator(".st-key-welcome-tour button")
        expect(tour).to_be_visible()
        expect(pg.locator(".st-key-welcome-default button")).to_be_visible()
        start = pg.locator(".st-key-start-run button")
        expect(start).to_be_visible()
        assert start.bounding_box()["y"] < 900  # Start is on the first screen, without scrolling
        if width == 1400 and screenshot_dir:
            expect(pg.locator(".st-key-cfg-ppo-learning_rate input")).to_be_visible()  # the form has drawn
            expect(pg.locator("[data-testid='stSkeleton']")).to_have_count(0)
            pg.screenshot(path=str(screenshot_dir / "launch.png"), full_page=False)
        tour.click()
        pg.wait_for_url("**/live?run=*")
        expect(pg.locator("h1", has_text="Live run")).to_be_visible()
        with empty_lab.store() as store:
            (run,) = store.list_runs()
        assert run.name == "tour" and run.status == "queued"
        assert f"run={run.id}" in pg.url

        # a deep link opened as a new page load: the page finds the server at the root at once
        deep = context.new_page()
        deep_rec = Recorder(deep)
        deep.goto(f"{empty_lab.url}/live?run={run.id}")
        expect(deep.locator("h1", has_text="Live run")).to_be_visible()
        deep.wait_for_timeout(2000)  # let the page's health and host-config probes finish
        assert any("/_stcore/health" in u for u in deep_rec.requests)
        assert not deep_rec.failures, deep_rec.failures
        assert not [u for u in deep_rec.requests if "/live/_stcore/" in u]
        assert not deep_rec.foreign(), deep_rec.foreign()
        assert not rec.failures, rec.failures
        assert not rec.foreign(), rec.foreign()  # no icon font or anything else from another host
    finally:
        context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_launch_lists_problems_at_the_top_linked_to_their_section(empty_lab, chromium, width):
    context, pg, rec = new_page(chromium, width)
    try:
        pg.goto(empty_lab.url)
        box = pg.locator(".st-key-cfg-ppo-max_ppo_steps input")
        box.fill("0")
        box.press("Enter")
        problems = pg.locator(".st-key-start-panel [data-testid='stAlertContentError']")
        expect(problems).to_contain_text("to fix before the run can start")
        link = problems.locator("a", has_text="Training steps")
        expect(link).to_have_attribute("href", "#essentials")
        expect(pg.locator(".st-key-start-run button")).to_be_disabled()
        assert pg.locator("#essentials").count() == 1  # the link's target exists
        assert not rec.failures and not rec.foreign()
    finally:
        context.close()
