"""Measure the run store on SQLite and (with --pg) PostgreSQL: log N steps x K metrics, then read them back.

Usage: python bench/bench_store.py [--steps 20000] [--keys 20] [--db PATH|URL] [--pg URL|auto] [--smoke]
Uses a fresh SQLite file in a temporary folder unless --db is given. `--pg URL` (a postgresql+psycopg:// URL of an
empty database) measures PostgreSQL the same way; `--pg auto` starts a throwaway local server (Debian's postgresql
package, tests/pg_server.py) for the measurement. Without --pg the PostgreSQL part is skipped. Not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.store import Store  # noqa: E402


def bench(url: str, steps: int, n_keys: int) -> dict[str, float]:
    """Write `steps` steps of `n_keys` metrics to a new run at `url` (one log_metrics per step, as a run does), read
    them back; returns seconds per operation."""
    store = Store(url)
    run_id = store.create_run("bench: true", name="bench", total_steps=steps)
    keys = [f"group{k % 4}/metric_{k:02d}" for k in range(n_keys)]
    n_rows = steps * n_keys
    write = []
    for step in range(steps):
        t0 = time.perf_counter()
        store.log_metrics(run_id, step, {k: step * 0.001 + i for i, k in enumerate(keys)})
        write.append(time.perf_counter() - t0)
    write.sort()
    t0 = time.perf_counter()
    wide = store.metrics_wide(run_id)
    t_wide = time.perf_counter() - t0
    assert wide.shape == (steps, n_keys), wide.shape
    t0 = time.perf_counter()
    long = store.metrics(run_id)
    t_long = time.perf_counter() - t0
    assert len(long) == n_rows
    t0 = time.perf_counter()
    store.metrics(run_id, keys=[keys[0]])
    t_one = time.perf_counter() - t0
    since = int(long["id"].iloc[-n_keys - 1])  # a live poll: everything after the last step's rows
    t0 = time.perf_counter()
    for _ in range(100):
        new = store.metrics(run_id, since_id=since)
    t_poll = (time.perf_counter() - t0) / 100
    assert len(new) == n_keys
    store.close()
    return {"rows": n_rows, "write_total": sum(write), "write_median": write[len(write) // 2],
            "write_p95": write[int(len(write) * 0.95)], "wide": t_wide, "long": t_long, "one": t_one,
            "poll": t_poll}


def report(name: str, r: dict[str, float], steps: int) -> None:
    print(f"[{name}] rows {r['rows']:,}; write, one log_metrics per step: {r['write_total']:.2f} s "
          f"(median {r['write_median'] * 1e3:.2f} ms/step, p95 {r['write_p95'] * 1e3:.2f} ms, "
          f"{r['rows'] / r['write_total']:,.0f} rows/s)")
    print(f"[{name}] read all wide {r['wide']:.2f} s, long {r['long']:.2f} s, one key {r['one'] * 1e3:.1f} ms, "
          f"incremental poll (since_id) {r['poll'] * 1e3:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--db", default=None, help="SQLite path or URL (default: a temporary file)")
    ap.add_argument("--pg", default=None, help="PostgreSQL URL of an empty database, or 'auto' (a local server)")
    ap.add_argument("--smoke", action="store_true", help="200 steps x 5 metrics (seconds)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.keys = 200, 5
    with tempfile.TemporaryDirectory() as tmp:
        report("sqlite", bench(args.db or str(Path(tmp) / "bench.db"), args.steps, args.keys), args.steps)
    if not args.pg:
        print("[postgresql] skipped (no --pg URL)")
        return
    server = None
    url = args.pg
    if url == "auto":
        sys.path.insert(0, str(ROOT / "tests"))
        import pg_server

        server = pg_server.start()
        url = server.create_database()
    try:
        report("postgresql", bench(url, args.steps, args.keys), args.steps)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
