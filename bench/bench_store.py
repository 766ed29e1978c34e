"""Measure the run store: log 20,000 steps x 20 metrics, then read them back (prints numbers).

Usage: python bench/bench_store.py [--steps 20000] [--keys 20] [--db PATH] [--smoke]
Uses a fresh SQLite file in a temporary folder unless --db is given. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.store import Store  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--db", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="200 steps x 5 metrics in a temporary folder (seconds)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.keys, args.db = 200, 5, None

    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "bench.db"
        store = Store(db)
        run_id = store.create_run("bench: true", name="bench", total_steps=args.steps)
        keys = [f"group{k % 4}/metric_{k:02d}" for k in range(args.keys)]
        n_rows = args.steps * args.keys

        # The worker's real path: one log_metrics call (one committed transaction) per step.
        t0 = time.perf_counter()
        for step in range(args.steps):
            store.log_metrics(run_id, step, {k: step * 0.001 + i for i, k in enumerate(keys)})
        t_write = time.perf_counter() - t0

        t0 = time.perf_counter()
        wide = store.metrics_wide(run_id)
        t_wide = time.perf_counter() - t0
        assert wide.shape == (args.steps, args.keys), wide.shape

        t0 = time.perf_counter()
        long = store.metrics(run_id)
        t_long = time.perf_counter() - t0
        assert len(long) == n_rows

        t0 = time.perf_counter()
        one = store.metrics(run_id, keys=[keys[0]])
        t_one = time.perf_counter() - t0

        # A live poll: everything after the last 1 step's rows.
        since = int(long["id"].iloc[-args.keys - 1])
        t0 = time.perf_counter()
        for _ in range(100):
            new = store.metrics(run_id, since_id=since)
        t_poll = (time.perf_counter() - t0) / 100
        assert len(new) == args.keys

        size_mb = Path(db).stat().st_size / 1e6
        store.close()

    print(f"rows: {n_rows:,} ({args.steps:,} steps x {args.keys} metrics), db file {size_mb:.1f} MB")
    print(
        f"write, one log_metrics per step: {t_write:.2f} s  "
        f"({t_write / args.steps * 1e3:.3f} ms/step, {n_rows / t_write:,.0f} rows/s)"
    )
    print(f"read all, metrics_wide:          {t_wide:.2f} s")
    print(f"read all, metrics (long):        {t_long:.2f} s")
    print(f"read one key ({len(one):,} rows):      {t_one * 1e3:.1f} ms")
    print(f"incremental poll (since_id):     {t_poll * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
