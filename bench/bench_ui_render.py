"""Measure what the live page costs for a big run: 20,000 steps × 20 metric series (400,000 rows).

Usage: python bench/bench_ui_render.py [--steps 20000] [--series 20] [--repeat 3] [--smoke]

Stages, each timed on the server side of the page (what happens before the browser gets the figures):
  read      Store.metrics(run) — all rows from SQLite (the page's first visit; later visits read only new rows)
  wide      app.charts.to_wide — one column per key
  figures   app.charts.run_figures — the 8 live panels, downsampled to ~2,000 points per series
  json      plotly's JSON of those figures (what Streamlit sends to the browser)
  tick      one live refresh: read 20 new rows (since_id), to_wide, figures, json
and, for comparison, figures + json without downsampling. Target: figures + json < 1 s. The browser side
(cold page load until every chart is drawn) is measured by tests/e2e/test_lab_browser.py. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app import charts  # noqa: E402
from engine.store import Metric, Store  # noqa: E402


def metric_keys(n_series: int) -> list[str]:
    """n_series keys that the live page all draws: the panels' own keys, then one per reward backend.

    (A real PPO run logs ~35 keys a step, of which the page draws 11 plus one per backend; here every
    series is drawn, the worst case.)
    """
    keys = [k for p in charts.PANELS for k in p.lines + p.secondary] + ["env/reward_mean", "env/reward_std"]
    keys += [f"env/reward/backend_{i}" for i in range(max(n_series - len(keys), 0))]
    return keys[:n_series]


def write_big_run(store: Store, steps: int = 20_000, n_series: int = 20, seed: int = 0) -> str:
    """A completed run with `steps` × `n_series` metric rows (random walks), written in one transaction."""
    from sqlalchemy import insert

    run_id = store.create_run("name: big\n", name=f"big {steps}x{n_series}", total_steps=steps)
    store.set_status(run_id, "running")
    rng = np.random.default_rng(seed)
    keys = metric_keys(n_series)
    values = rng.normal(size=(steps, len(keys))).cumsum(axis=0) / 50.0
    t0 = time.time() - steps * 0.5
    rows = [{"run_id": run_id, "step": s + 1, "key": k, "value": float(values[s, j]), "time": t0 + 0.5 * s}
            for s in range(steps) for j, k in enumerate(keys)]
    # One bulk insert (the runner would take 20,000 small transactions to write this).
    with store.engine.begin() as conn:
        conn.execute(insert(Metric.__table__), rows)
    store.set_progress(run_id, steps, steps)
    store.set_status(run_id, "completed")
    return run_id


def timed(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="500 steps, one repeat (seconds)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.repeat = 500, 1

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        t = time.perf_counter()
        run_id = write_big_run(store, args.steps, args.series)
        print(f"wrote {args.steps:,} steps × {args.series} series in {time.perf_counter() - t:.1f} s")

        r = args.repeat
        t_read, long = timed(lambda: store.metrics(run_id), r)
        t_wide, wide = timed(lambda: charts.to_wide(long), r)
        t_figs, figs = timed(lambda: charts.run_figures(wide), r)
        t_json, _ = timed(lambda: [f.to_json() for f in figs.values()], r)
        t_figs_s, figs_s = timed(lambda: charts.run_figures(wide, smoothing=0.9), r)
        t_json_s, _ = timed(lambda: [f.to_json() for f in figs_s.values()], r)
        n_points = max(len(tr.x) for f in figs.values() for tr in f.data if tr.fill != "toself")

        last_id = int(long["id"].max())
        store.log_metrics(run_id, args.steps + 1, {k: 0.0 for k in metric_keys(args.series)})

        def tick():
            new = store.metrics(run_id, since_id=last_id)
            import pandas as pd

            w = charts.to_wide(pd.concat([long, new], ignore_index=True))
            return [f.to_json() for f in charts.run_figures(w).values()]

        t_tick, _ = timed(tick, r)
        t_raw, raw = timed(lambda: charts.run_figures(wide, max_points=10**9), 1)
        t_raw_json, _ = timed(lambda: [f.to_json() for f in raw.values()], 1)
        store.close()

    print(f"median of {r}; {len(long):,} rows; ≤ {n_points:,} points per series after downsampling")
    print(f"  read (cold, all rows)          {t_read * 1000:8.0f} ms")
    print(f"  to_wide                        {t_wide * 1000:8.0f} ms")
    print(f"  figures (8 panels)             {t_figs * 1000:8.0f} ms")
    print(f"  json                           {t_json * 1000:8.0f} ms")
    print(f"  figures + json, EMA smoothing  {(t_figs_s + t_json_s) * 1000:8.0f} ms")
    print(f"  render = figures + json        {(t_figs + t_json) * 1000:8.0f} ms   (target < 1000 ms)")
    print(f"  live tick (20 new rows)        {t_tick * 1000:8.0f} ms")
    print(f"  without downsampling: figures + json {(t_raw + t_raw_json) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
