"""What watching costs a run: step time of a tiny PPO run, executed by a worker process, with 0, 1 and 3 real browser
tabs (Playwright + Debian's chromium) open on its Live page; and the bytes per second an idle Live tab receives
(websocket frames counted with Playwright's page.on("websocket")).

Usage: python bench/bench_live_tabs.py [--steps 40] [--tabs 0 1 3] [--rounds 2] [--idle-s 30] [--smoke]

The worker is paused (SIGSTOP) while a scenario's tabs load, and step times count only the steps taken after they
had loaded (metric rows' time); scenarios alternate order round by round so a shared machine's drift spreads over
all of them.

The lab's server runs with RLAIF_LAB_LOCAL_WORKER=0; this process starts the one worker (Lab.connect), so every
scenario has the same worker whether or not a page was opened. "Idle": a run held running by this process (claimed,
heartbeating, reporting nothing new), so the tab has nothing to redraw.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = os.environ.get("RLAIF_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RLAIF_LAB_DB": str(db), "RLAIF_LAB_LOCAL_WORKER": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true", "--server.port",
           str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"streamlit did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def tiny_config(model_dir: Path, out: Path, steps: int, name: str):
    from bench._tiny import prompt_source
    from engine.config import RewardBackendSettings, RunConfig

    cfg = RunConfig(name=name)
    cfg.output_dir = str(out)
    cfg.evaluation.enabled = False
    cfg.model.name_or_path, cfg.model.device = str(model_dir), "cpu"
    cfg.data.source, cfg.data.holdout_size, cfg.data.validation_size = prompt_source(), 8, 0
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, steps
    cfg.generation.max_new_tokens = 16
    return cfg


class Tabs:
    """n browser tabs on a run's Live page, counting the bytes their websockets receive."""

    def __init__(self, browser, url: str, run_id: str, n: int) -> None:
        self.received = 0
        self.pages = []
        for _ in range(n):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("websocket", self._watch)
            page.goto(f"{url}/live?run={run_id}")
            page.wait_for_selector("[data-testid='stApp'] h1", timeout=120_000)
            self.pages.append(page)

    def _watch(self, ws) -> None:
        def count(payload) -> None:
            self.received += len(payload)

        ws.on("framereceived", count)

    def wait(self, seconds: float) -> None:
        """Sleep while Playwright delivers the tabs' websocket events (time.sleep would hold them back)."""
        if self.pages:
            self.pages[0].wait_for_timeout(1000 * seconds)
        else:
            time.sleep(seconds)

    def close(self) -> None:
        for page in self.pages:
            page.close()


def step_times(store, run_id: str) -> list[float]:
    return store.metrics(run_id, keys=["time/step_s"])["value"].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--tabs", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2, help="runs per scenario, in alternating order")
    ap.add_argument("--smoke", action="store_true", help="3 steps, 0 and 1 tab, a 5-s idle window")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.tabs, args.idle_s, args.rounds = 3, [0, 1], 5.0, 1
    if not Path(CHROMIUM).exists():
        print(f"no chromium at {CHROMIUM}: nothing measured (apt-get install -y chromium)")
        return

    from playwright.sync_api import sync_playwright

    from bench._tiny import build_gpt2
    from engine.api import Lab
    from engine.config import RunConfig
    from engine.store import Store, new_owner_id

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_gpt2(tmp / "model", vocab=512, n_embd=64, n_layer=2, n_head=2, n_dialogues=100)
        db = tmp / "lab.db"
        lab = Lab.connect(str(db), start_worker=True)  # the one worker of every scenario
        server, url = start_server(db, tmp / "server.log")
        results = {}
        try:
            # Chromium's profile sockets live under $TMPDIR and a Unix socket path holds at most 107 bytes: a deep
            # temporary folder (pytest's) makes the browser die at launch. Its profile is removed when it closes.
            if len(tempfile.gettempdir()) > 40 and Path("/tmp").is_dir():
                os.environ["TMPDIR"] = "/tmp"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                # warm-up: the worker's first run pays imports and caches
                warm = lab.start_run(tiny_config(tmp / "model", tmp / "runs", 2, "warm-up"))
                while lab.get_run(warm).is_active:
                    time.sleep(0.5)
                measured: dict[int, list[float]] = {n: [] for n in args.tabs}
                received: dict[int, list[float]] = {n: [] for n in args.tabs}
                for rnd in range(args.rounds):  # alternate the order so the machine's drift hits every scenario
                    for n in (args.tabs if rnd % 2 == 0 else args.tabs[::-1]):
                        # the worker waits (SIGSTOP) while the tabs load, so every step is taken with them open
                        pids = [w.pid for w in lab.store.live_workers()]
                        for pid in pids:
                            os.kill(pid, signal.SIGSTOP)
                        try:
                            run_id = lab.start_run(tiny_config(tmp / "model", tmp / "runs", args.steps,
                                                               f"tabs-{n}"))
                            tabs = Tabs(browser, url, run_id, n)
                            tabs.wait(2)
                        finally:
                            for pid in pids:
                                os.kill(pid, signal.SIGCONT)
                        tabs.received = 0  # the first draw is not what watching costs
                        loaded, t0 = time.time(), time.monotonic()
                        while lab.get_run(run_id).is_active:
                            tabs.wait(0.5)
                        wall = time.monotonic() - t0
                        tabs.close()
                        status = lab.get_run(run_id).status
                        if status != "completed":
                            raise SystemExit(f"run {run_id} ended {status}: {lab.get_run(run_id).error}")
                        rows = lab.store.metrics(run_id, keys=["time/step_s"])
                        watched = rows[rows["time"] > loaded]["value"].tolist()  # steps taken with the tabs open
                        measured[n] += watched or rows["value"].tolist()
                        received[n].append(tabs.received / wall / max(n, 1))
                        print(f"round {rnd + 1}, {n} Live tab(s): median step "
                              f"{statistics.median(watched or rows['value'].tolist()):.3f} s over {len(watched)} "
                              f"watched steps; {received[n][-1] / 1024:.2f} KiB/s per tab", flush=True)
                for n in args.tabs:
                    results[n] = (statistics.median(measured[n]), statistics.mean(received[n]))
                # an idle Live tab: a run held running (claimed and heartbeating) that reports nothing new
                holder = Store(str(db), owner=new_owner_id("bench"))
                idle = holder.create_run(RunConfig(name="idle").to_yaml(), name="idle", total_steps=10)
                holder.claim_run(idle)
                try:
                    tabs = Tabs(browser, url, idle, 1)
                    tabs.wait(3)  # the first draw's frames are not idle
                    before = tabs.received
                    tabs.wait(args.idle_s)
                    idle_bps = (tabs.received - before) / args.idle_s
                    hidden = tabs.pages[0]
                    # a hidden tab: the visibility component reports it and the timer stops
                    hidden.evaluate("""() => {
                        Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
                        Object.defineProperty(document, 'hidden', {value: true, configurable: true});
                        document.dispatchEvent(new Event('visibilitychange'));
                    }""")
                    tabs.wait(3)
                    before = tabs.received
                    tabs.wait(args.idle_s)
                    hidden_bps = (tabs.received - before) / args.idle_s
                    tabs.close()
                finally:
                    holder.set_status(idle, "cancelled")
                    holder.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
            for w in lab.store.list_workers():
                try:
                    os.kill(w.pid, 15)
                except ProcessLookupError:
                    pass
            lab.close()
        base = results.get(0, (None,))[0]
        for n, (median, _) in results.items():
            if n and base:
                print(f"{n} tab(s): step time {100 * (median / base - 1):+.1f} % vs no tab")
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"an idle Live tab receives {idle_bps:.0f} B/s (visible), {hidden_bps:.0f} B/s (hidden)")


if __name__ == "__main__":
    main()
