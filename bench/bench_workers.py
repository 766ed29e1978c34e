"""Throughput of 1 vs 2 vs 3 local worker processes on one store, on tiny PPO runs (prints numbers).

Usage: python bench/bench_workers.py [--runs 12] [--steps 2] [--workers 1,2,3] [--pg URL|auto] [--smoke]
For each worker count: a fresh store (a SQLite file in a temporary folder, or with --pg a PostgreSQL database), that
many `python -m engine worker` processes, started and registered first; then `--runs` identical tiny PPO runs
(a 2-layer random GPT-2, evaluation off) are queued and the clock runs until the last one completes. Each worker
runs with one torch thread (as a worker sharing a machine should). Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.config import RewardBackendSettings, RunConfig  # noqa: E402
from engine.store import Store  # noqa: E402


def tiny_config(model_dir: Path, steps: int, out: Path, i: int) -> RunConfig:
    cfg = RunConfig(name=f"bench-{i}")
    cfg.evaluation.enabled = False
    cfg.model.name_or_path, cfg.model.device, cfg.model.mixed_precision = str(model_dir), "cpu", "none"
    cfg.data.source, cfg.data.holdout_size = "builtin", 4
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.num_generations, cfg.ppo.max_ppo_steps = 4, 2, 1, steps
    cfg.generation.max_new_tokens = 8
    cfg.checkpoint.every_steps = 0
    cfg.output_dir = str(out)
    return cfg


def measure(url: str, n_workers: int, n_runs: int, steps: int, model_dir: Path, tmp: Path) -> dict[str, float]:
    from engine.worker import submit

    store = Store(url)
    env = {**os.environ, "RLAIF_LAB_DB": url, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "engine", "worker", "--poll-s", "0.1", "--threads", "1"], cwd=tmp,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(n_workers)]
    try:
        while len(store.live_workers()) < n_workers:  # all registered (torch imported) before the clock starts
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"a worker exited: {[p.stderr.read()[-2000:] for p in procs if p.poll()]}")
            time.sleep(0.1)
        runs = [submit(store, tiny_config(model_dir, steps, tmp / "out", i)) for i in range(n_runs)]
        t0 = time.perf_counter()
        while any(store.get_run(r).status in ("queued", "running") for r in runs):
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        statuses = {store.get_run(r).status for r in runs}
        assert statuses == {"completed"}, statuses
        busy = sum((store.get_run(r).duration_s or 0.0) for r in runs)
    finally:
        for p in procs:
            p.terminate()  # SIGTERM: the worker unregisters and exits (its queue is empty by now)
        for p in procs:
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()
        store.close()
    return {"wall": wall, "runs_per_min": n_runs / wall * 60, "mean_run_s": busy / n_runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--workers", default="1,2,3")
    ap.add_argument("--pg", default=None, help="PostgreSQL server URL without a database, or 'auto' (local server)")
    ap.add_argument("--smoke", action="store_true", help="2 runs of 1 step, 1 and 2 workers, SQLite (seconds)")
    args = ap.parse_args()
    if args.smoke:
        args.runs, args.steps, args.workers, args.pg = 2, 1, "1,2", None
    counts = [int(n) for n in args.workers.split(",")]
    server = None
    if args.pg:
        sys.path.insert(0, str(ROOT / "tests"))
        import pg_server

        server = pg_server.start() if args.pg == "auto" else pg_server.PgServer(args.pg.rstrip("/"))
    from _tiny import build_gpt2

    try:
        with tempfile.TemporaryDirectory() as tmp_str:
            tmp = Path(tmp_str)
            build_gpt2(tmp / "model", vocab=512, n_embd=64, n_layer=2, n_head=2, n_dialogues=100)
            print(f"{args.runs} tiny PPO runs x {args.steps} steps; backend "
                  f"{'postgresql' if server else 'sqlite'}; {os.cpu_count()} CPU cores")
            base = None
            for n in counts:
                url = server.create_database() if server else f"sqlite:///{tmp / f'w{n}.db'}"
                r = measure(url, n, args.runs, args.steps, tmp / "model", tmp)
                base = base or r["runs_per_min"]
                print(f"{n} worker(s): {r['wall']:.1f} s wall, {r['runs_per_min']:.1f} runs/min "
                      f"(x{r['runs_per_min'] / base:.2f} vs 1), mean run {r['mean_run_s']:.1f} s")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
