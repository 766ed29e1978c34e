"""Refresh docs/screenshots/<page>.png from a store that holds at least one finished run.

Usage: python docs/take_screenshots.py --db runs/demo.db [--run RUN_ID] [--compare RUN_ID ...] [--pages live ...]

Starts the lab as scripts/lab.sh serves it (`streamlit run app/serve.py`: deep links load clean) on a free port
over that store, opens each page in Debian's chromium
(Playwright, headless) and saves a full-height screenshot. `--run` picks the run shown on the live and
before/after pages (default: the newest completed one); `--compare` the runs selected on the runs page
(default: the newest two). The browser tests (tests/e2e) can write the same files from their own tiny runs
with RLAIF_LAB_SCREENSHOTS=1; this script is for pictures of a real run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT))


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def lab_server(db: str | Path, timeout_s: float = 60) -> Iterator[str]:
    """`streamlit run app/serve.py` (as scripts/lab.sh) over the store `db` on a free port; yields its URL once
    healthy. The lab starts no worker here (RLAIF_LAB_LOCAL_WORKER=0): the pictures only read the store."""
    port = free_port()
    env = {**os.environ, "RLAIF_LAB_DB": str(db) if "://" in str(db) else str(Path(db).resolve()),
           "RLAIF_LAB_LOCAL_WORKER": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/serve.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("streamlit did not start")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def full_height(pg, min_height: int = 900, max_height: int = 3200) -> None:
    """Grow the viewport to the page's content so one screenshot holds the whole page."""
    height = pg.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    pg.set_viewport_size({"width": 1400, "height": max(min_height, min(int(height) + 40, max_height))})
    pg.wait_for_timeout(1500)


def shoot(pg, url: str, name: str, wait_for: str) -> None:
    pg.set_viewport_size({"width": 1400, "height": 1000})
    pg.goto(url)
    pg.wait_for_selector(wait_for, state="attached", timeout=60_000)
    pg.wait_for_timeout(2500)
    full_height(pg)
    path = OUT / f"{name}.png"
    pg.screenshot(path=path)
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    from engine.store import Store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--run")
    ap.add_argument("--compare", nargs="*")
    ap.add_argument("--pages", nargs="*",
                    default=["launch", "live", "before_after", "runs", "playground", "policy_playground"])
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    with Store(args.db) as store:
        done = [r.id for r in store.list_runs("completed")]
    if not done:
        sys.exit(f"{args.db} has no completed run")
    run_id = args.run or done[0]
    compare = args.compare or done[:2]

    with lab_server(args.db) as url:
        from playwright.sync_api import sync_playwright

        OUT.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            if "launch" in args.pages:
                shoot(pg, f"{url}/", "launch", ".st-key-start-run")
            if "live" in args.pages:
                shoot(pg, f"{url}/live?run={run_id}", "live", ".st-key-chart-throughput .js-plotly-plot")
            if "before_after" in args.pages:
                shoot(pg, f"{url}/before_after?run={run_id}", "before_after", ".st-key-ba-table table")
            if "runs" in args.pages:
                shoot_runs(pg, url, compare)
            if "playground" in args.pages:
                shoot(pg, f"{url}/playground", "playground", "[data-testid='stDataFrame']")
            if "policy_playground" in args.pages:
                shoot_policy_playground(pg, url, run_id)
            browser.close()


def shoot_policy_playground(pg, url: str, run_id: str) -> None:
    """The policy playground after k = 4 samples of the run's first hold-out prompt (the lab's worker, or the
    playground process it starts, generates them: minutes for a real model on a CPU)."""
    pg.set_viewport_size({"width": 1400, "height": 1000})
    pg.goto(f"{url}/policy_playground?run={run_id}")
    pg.get_by_role("heading", name="Policy playground").wait_for(timeout=60_000)
    choice = pg.locator(".st-key-pp-source").get_by_text("A hold-out prompt", exact=True).first
    if choice.count():
        choice.click()
    else:
        pg.locator(".st-key-pp-prompt textarea").fill("Human: What do you think of my neighbour?\n\nAssistant:")
    pg.get_by_role("button", name="Generate").click()
    pg.locator(".st-key-pp-trained").wait_for(timeout=1_800_000)
    pg.wait_for_timeout(1500)
    full_height(pg)
    path = OUT / "policy_playground.png"
    pg.screenshot(path=path)
    print(f"wrote {path.relative_to(ROOT)}")


def shoot_runs(pg, url: str, compare: list[str]) -> None:
    """The runs page with the compared runs' boxes ticked in the table's selection column."""
    pg.set_viewport_size({"width": 1400, "height": 1000})
    pg.goto(f"{url}/runs")
    grid = pg.locator(".st-key-runs-table [data-testid='stDataFrameResizable']")
    grid.wait_for(timeout=60_000)
    pg.wait_for_timeout(1500)
    header = grid.locator("table tr").first.evaluate("r => Array.from(r.querySelectorAll('th,td')).map(c => c.textContent)")
    rows = grid.locator("table tr").evaluate_all(
        "rs => rs.slice(1).map(r => Array.from(r.querySelectorAll('td,th')).map(c => c.textContent))")
    key = next((h for h in ("id", "run") if h in header), None)  # the id column's title changed with the layout
    ids = [r[header.index(key)] for r in rows] if key else []
    box = grid.bounding_box()
    for rid in compare:
        if rid in ids:  # rows are ~35 px high under a ~35 px header; the tick box is the first column
            pg.mouse.click(box["x"] + 18, box["y"] + 35 * (ids.index(rid) + 1) + 17)
            pg.wait_for_timeout(1500)
    pg.wait_for_timeout(2500)
    full_height(pg)
    pg.screenshot(path=OUT / "runs.png")
    print("wrote docs/screenshots/runs.png")


if __name__ == "__main__":
    main()
