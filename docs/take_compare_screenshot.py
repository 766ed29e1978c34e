"""Write docs/screenshots/compare.png: the Compare methods page over a store with finished runs.

Usage: python docs/take_compare_screenshot.py --db runs/rlaif_lab.db [--runs ID ...] [--scorer RM_RUN_ID]
       [--out docs/screenshots/compare.png] [--chromium /usr/bin/chromium]

Starts `streamlit run app/serve.py` on a free port over that store and opens /compare?runs=...&scorer=... in
Debian's chromium (Playwright, headless). --runs: the runs to compare (default: the page's default, every completed
policy run); --scorer: the reward_model run whose reward model scores helpfulness (default: the newest completed
one, if any). The first visit scores every response not yet scored (kept in the store), which takes a while with
a large reward model on CPU: the script waits up to --timeout seconds for the charts. Then a full-height screenshot.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from take_screenshots import CHROMIUM_ARGS, full_height, lab_server  # noqa: E402


def main() -> None:
    from engine.compare import helpfulness_scorers, policy_runs
    from engine.store import Store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="the store: a SQLite path or any SQLAlchemy URL")
    ap.add_argument("--runs", nargs="*", help="run ids to compare (default: every completed policy run)")
    ap.add_argument("--scorer", help="reward_model run id for helpfulness (default: the newest completed one)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots" / "compare.png"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for scoring and the charts")
    ap.add_argument("--chromium", default=os.environ.get("RLAIF_LAB_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()

    db = args.db if "://" in args.db else str(Path(args.db).resolve())
    with Store(db) as store:
        done = [r.id for r in policy_runs(store, ["completed"])]
        scorers = [r.id for r in helpfulness_scorers(store)]
    if not done:
        sys.exit(f"{args.db} has no completed policy run to compare")
    query = {}
    if args.runs:
        query["runs"] = ",".join(args.runs)
    if args.scorer:
        if args.scorer not in scorers:
            sys.exit(f"{args.scorer} is not a completed reward_model run of {args.db} (there are: {scorers or 'none'})")
        query["scorer"] = args.scorer
    chart = ".st-key-cmp-scatter .js-plotly-plot" if (args.scorer or scorers) else ".st-key-cmp-kl .js-plotly-plot"

    with lab_server(db) as url:
        from playwright.sync_api import sync_playwright

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
            pg = browser.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(f"{url}/compare" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
            pg.wait_for_selector(chart, state="attached", timeout=args.timeout * 1000)
            pg.wait_for_timeout(2500)
            full_height(pg)
            pg.screenshot(path=out)
            browser.close()
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
