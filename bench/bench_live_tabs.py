"""What watching costs a run: 0, 1 and 3 real browser tabs (Playwright + Debian's chromium) on a run's Live page,
measured as CPU seconds (from /proc, per process tree: the Streamlit server, the chromium processes) per minute of
watching, which a busy shared machine does not distort, as a share of the machine's cores; and, as before, the median
step time of the run (which a busy machine does distort) and the bytes and requests a tab receives / makes.

Usage: python bench/bench_live_tabs.py [--steps 120] [--tabs 0 1 3] [--rounds 2] [--idle-s 30]
                                       [--server serve|main] [--model builtin:smollm2] [--smoke]

Two situations per tab count: "training" (a run trains in a worker process while the tabs watch it: every metric
row is news, so the tabs redraw at their throttled rate) and "idle" (a run held running by this process, claimed and
heartbeating, reporting nothing new: the cost of merely having the tab open). A hidden tab is measured idle too.

--server serve (default): the lab as scripts/lab.sh serves it (app/serve.py: the browser polls the watch route and
the page reruns only on a change); --server main: `streamlit run app/main.py` (no route: the page's server-side
fragment timer), for comparison. --model: the policy (default: a tiny random GPT-2 built here, ~0.2 s steps on
2 cores); with --model the run is the measured default config (RunConfig()) with that model, evaluation off.
`--model builtin:smollm2 --steps 6 --rounds 1` measures on the default model (~20 s steps).

The worker is paused (SIGSTOP) while a scenario's tabs load, so every step is taken with them open and the first
draw is not counted; scenarios alternate order round by round so a shared machine's drift spreads over all of them.
The lab's server runs with RLAIF_LAB_LOCAL_WORKER=0; this process starts the one worker (Lab.connect).
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
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, log: Path, script: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RLAIF_LAB_DB": str(db), "RLAIF_LAB_LOCAL_WORKER": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true", "--server.port",
           str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
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


# ---- CPU seconds per process tree, from /proc ------------------------------------------------------------


def _procs() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far: utime + stime) of every process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[int(entry)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def tree(root: int, procs: dict, keep=lambda name: True) -> set[int]:
    """`root` and its descendants whose name passes `keep` (the descendants of one that fails are not followed)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and (pid == root or keep(procs[pid][1])):
            found.add(pid)
            todo += children.get(pid, [])
    return found


class CpuMeter:
    """CPU seconds used by the server's process tree and by the chromium processes this bench started, between
    `start()` and `stop()`. A process that exits meanwhile loses its last seconds (tabs are closed only after)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def sample(self) -> dict[str, float]:
        procs = _procs()
        server = tree(self.server_pid, procs)
        browser = {p for p in tree(os.getpid(), procs) if "chrom" in procs[p][1] or "headless" in procs[p][1]}
        return {"server": sum(procs[p][2] for p in server), "chromium": sum(procs[p][2] for p in browser),
                "_server": server, "_chromium": browser, "_procs": procs}

    def start(self) -> None:
        self.t0, self.s0 = time.monotonic(), self.sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds per minute of wall time, per tree, counting only processes alive at both ends."""
        s1, wall = self.sample(), time.monotonic() - self.t0
        out = {"wall_s": wall}
        for part in ("server", "chromium"):
            both = s1["_" + part] & self.s0["_" + part]
            used = sum(s1["_procs"][p][2] - self.s0["_procs"][p][2] for p in both)
            out[part] = 60.0 * used / wall
        return out


# ---- the run and the tabs --------------------------------------------------------------------------------


def run_config(model_dir: Path | None, model: str | None, out: Path, steps: int, name: str):
    from bench._tiny import prompt_source
    from engine.config import RewardBackendSettings, RunConfig

    cfg = RunConfig(name=name)
    cfg.output_dir = str(out)
    cfg.evaluation.enabled = False
    if model:  # the measured default with another (or the default) model
        cfg.model.name_or_path = model
        cfg.ppo.max_ppo_steps = steps
        return cfg
    cfg.model.name_or_path, cfg.model.device = str(model_dir), "cpu"
    cfg.data.source, cfg.data.holdout_size, cfg.data.validation_size = prompt_source(), 8, 0
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, steps
    cfg.generation.max_new_tokens = 16
    return cfg


class Tabs:
    """n browser tabs on a run's Live page, counting the websocket bytes they receive and the watch requests."""

    def __init__(self, browser, url: str, run_id: str, n: int) -> None:
        self.received = 0
        self.requests = 0
        self.marks0 = (0, 0.0)
        self.pages = []
        for _ in range(n):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)  # a shared machine may take long to load a page
            page.on("websocket", self._watch)
            page.on("request", self._request)
            page.goto(f"{url}/live?run={run_id}")
            page.wait_for_selector("[data-testid='stApp'] h1", timeout=180_000)
            page.get_by_text("metric rows").first.wait_for(timeout=180_000)  # drawn to the end
            self.pages.append(page)

    def _watch(self, ws) -> None:
        def count(payload) -> None:
            self.received += len(payload)

        ws.on("framereceived", count)

    def _request(self, request) -> None:
        if "/api/live-signature" in request.url:
            self.requests += 1

    def reset(self) -> None:
        self.received = self.requests = 0
        self.marks0 = self.marks()

    def marks(self) -> tuple[int, float]:
        """Redraws the tabs' watch components asked for, and the tabs' long-task milliseconds, summed over tabs."""
        redraws, busy = 0, 0.0
        for page in self.pages:
            try:
                r, b = page.evaluate("() => { const w = window.__rlaifLiveWatch || {};"
                                     " return [w.redraws || 0, w.busy || 0]; }")
            except Exception:  # a page gone or not yet drawn: nothing to add
                continue
            redraws, busy = redraws + int(r), busy + float(b)
        return redraws, busy

    def redraws_since_reset(self) -> tuple[int, float]:
        r, b = self.marks()
        return r - self.marks0[0], b - self.marks0[1]

    def wait(self, seconds: float) -> None:
        """Sleep while Playwright delivers the tabs' websocket events (time.sleep would hold them back)."""
        if self.pages:
            self.pages[0].wait_for_timeout(1000 * seconds)
        else:
            time.sleep(seconds)

    def hide(self) -> None:
        for page in self.pages:
            page.evaluate("""() => {
                Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
                Object.defineProperty(document, 'hidden', {value: true, configurable: true});
                document.dispatchEvent(new Event('visibilitychange'));
            }""")

    def close(self) -> None:
        for page in self.pages:
            page.close()


def share(cpu_per_min: float, cores: int) -> float:
    """CPU seconds per minute as a share (%) of the machine's cores."""
    return 100.0 * cpu_per_min / (60.0 * cores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--tabs", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2, help="training runs per scenario, in alternating order")
    ap.add_argument("--server", choices=["serve", "main"], default="serve",
                    help="serve: app/serve.py (the watch route, as scripts/lab.sh); main: app/main.py (fragment timer)")
    ap.add_argument("--model", default=None, help="e.g. builtin:smollm2 (default: a tiny GPT-2 built here)")
    ap.add_argument("--idle-only", action="store_true", help="only the idle tabs (no worker, no training run)")
    ap.add_argument("--settle-s", type=float, default=10.0,
                    help="wait after the tabs load, so the first draw's rendering is not counted as watching")
    ap.add_argument("--smoke", action="store_true", help="3 steps, 0 and 1 tab, 5-s idle windows")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.tabs, args.idle_s, args.rounds, args.settle_s = 3, [0, 1], 5.0, 1, 3.0
    if not Path(CHROMIUM).exists():
        print(f"no chromium at {CHROMIUM}: nothing measured (apt-get install -y chromium)")
        return
    cores = os.cpu_count() or 1

    from playwright.sync_api import sync_playwright

    from bench._tiny import build_gpt2
    from engine.api import Lab
    from engine.config import RunConfig
    from engine.store import Store, new_owner_id

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = None
        if not args.model and not args.idle_only:
            model_dir = tmp / "model"
            build_gpt2(model_dir, vocab=512, n_embd=64, n_layer=2, n_head=2, n_dialogues=100)
        db = tmp / "lab.db"
        lab = Lab.connect(str(db), start_worker=not args.idle_only)  # the one worker of every scenario
        script = "app/serve.py" if args.server == "serve" else "app/main.py"
        server, url = start_server(db, tmp / "server.log", script)
        meter = CpuMeter(server.pid)
        training: dict[int, dict[str, list[float]]] = {n: {} for n in args.tabs}
        idle: dict[str, dict[str, float]] = {}
        try:
            # Chromium's profile sockets live under $TMPDIR and a Unix socket path holds at most 107 bytes: a deep
            # temporary folder (pytest's) makes the browser die at launch. Its profile is removed when it closes.
            if len(tempfile.gettempdir()) > 40 and Path("/tmp").is_dir():
                os.environ["TMPDIR"] = "/tmp"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                if not args.idle_only:
                    # warm-up: the worker's first run pays imports and caches; the server its first page
                    warm = lab.start_run(run_config(model_dir, args.model, tmp / "runs", 2, "warm-up"))
                    Tabs(browser, url, warm, 1).close()
                    while lab.get_run(warm).is_active:
                        time.sleep(0.5)
                for rnd in range(0 if args.idle_only else args.rounds):  # alternate the order so the machine's drift hits every scenario
                    for n in (args.tabs if rnd % 2 == 0 else args.tabs[::-1]):
                        # the worker waits (SIGSTOP) while the tabs load, so every step is taken with them open
                        pids = [w.pid for w in lab.store.live_workers()]
                        for pid in pids:
                            os.kill(pid, signal.SIGSTOP)
                        try:
                            run_id = lab.start_run(run_config(model_dir, args.model, tmp / "runs", args.steps,
                                                              f"tabs-{n}"))
                            tabs = Tabs(browser, url, run_id, n)
                            tabs.wait(2)
                        finally:
                            for pid in pids:
                                os.kill(pid, signal.SIGCONT)
                        tabs.reset()  # the first draw is not what watching costs
                        loaded = time.time()
                        meter.start()
                        while lab.get_run(run_id).is_active:
                            tabs.wait(0.5)
                        cpu = meter.stop()
                        redraws, busy_ms = tabs.redraws_since_reset()
                        tabs.close()
                        status = lab.get_run(run_id).status
                        if status != "completed":
                            raise SystemExit(f"run {run_id} ended {status}: {lab.get_run(run_id).error}")
                        rows = lab.store.metrics(run_id, keys=["time/step_s"])
                        watched = rows[rows["time"] > loaded]["value"].tolist() or rows["value"].tolist()
                        t = training[n]
                        t.setdefault("steps", []).extend(watched)
                        for k in ("server", "chromium"):
                            t.setdefault(k, []).append(cpu[k])
                        t.setdefault("kib_s", []).append(tabs.received / cpu["wall_s"] / max(n, 1) / 1024)
                        t.setdefault("req_s", []).append(tabs.requests / cpu["wall_s"] / max(n, 1))
                        t.setdefault("redraws_min", []).append(60.0 * redraws / cpu["wall_s"] / max(n, 1))
                        long_ms = busy_ms / redraws if redraws else float("nan")
                        print(f"round {rnd + 1}, {n} tab(s), training: median step {statistics.median(watched):.3f} s"
                              f" ({len(watched)} steps); CPU s/min server {cpu['server']:.2f}, chromium "
                              f"{cpu['chromium']:.2f}; per tab {t['kib_s'][-1]:.2f} KiB/s, {t['req_s'][-1]:.2f} "
                              f"watch req/s; {t['redraws_min'][-1]:.2f} redraws/min per tab, long tasks "
                              f"{long_ms:.0f} ms per redraw; load {os.getloadavg()[0]:.1f}", flush=True)
                # idle: a run held running (claimed and heartbeating) that reports nothing new
                holder = Store(str(db), owner=new_owner_id("bench"))
                held = holder.create_run(RunConfig(name="idle").to_yaml(), name="idle", total_steps=10)
                holder.claim_run(held)
                try:
                    for n in args.tabs:
                        tabs = Tabs(browser, url, held, n)
                        tabs.wait(args.settle_s)  # the first draw's frames and rendering are not idle
                        for label in ("visible", "hidden") if n else ("visible",):
                            if label == "hidden":
                                tabs.hide()
                                tabs.wait(args.settle_s)
                            tabs.reset()
                            meter.start()
                            tabs.wait(args.idle_s)
                            cpu = meter.stop()
                            cpu["kib_s"] = tabs.received / cpu["wall_s"] / max(n, 1) / 1024
                            cpu["req_s"] = tabs.requests / cpu["wall_s"] / max(n, 1)
                            idle[f"{n} {label}"] = cpu
                            print(f"idle, {n} tab(s) {label}: CPU s/min server {cpu['server']:.2f}, chromium "
                                  f"{cpu['chromium']:.2f}; per tab {cpu['kib_s']:.2f} KiB/s, {cpu['req_s']:.2f} "
                                  f"watch req/s; load {os.getloadavg()[0]:.1f}", flush=True)
                        tabs.close()
                finally:
                    holder.set_status(held, "cancelled")
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

    print(f"\nserver: {script}; model: {args.model or 'tiny GPT-2 (built here)'}; {cores} cores; load average at "
          f"the end {os.getloadavg()[0]:.1f}")
    base = training.get(0) or None
    print("| Live tabs | median step | vs none | CPU s/min server + chromium | above no tab, share of "
          f"{cores} cores | KiB/s per tab | watch req/s per tab |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, t in training.items():
        if not t:  # --idle-only
            continue
        median = statistics.median(t["steps"])
        cpu = statistics.mean(t["server"]) + statistics.mean(t["chromium"])
        vs = f"{100 * (median / statistics.median(base['steps']) - 1):+.0f} %" if base and n else "—"
        above = (f"{share(cpu - statistics.mean(base['server']) - statistics.mean(base['chromium']), cores):.1f} %"
                 if base and n else "—")
        print(f"| {n} (training) | {median:.3f} s | {vs} | {cpu:.2f} | {above} | "
              f"{statistics.mean(t['kib_s']):.2f} | {statistics.mean(t['req_s']):.2f} |")
    zero = idle.get("0 visible")
    for label, c in idle.items():
        cpu = c["server"] + c["chromium"]
        above = f"{share(cpu - zero['server'] - zero['chromium'], cores):.1f} %" if zero and label != "0 visible" \
            else "—"
        print(f"| {label} (idle) | — | — | {cpu:.2f} | {above} | {c['kib_s']:.2f} | {c['req_s']:.2f} |")


if __name__ == "__main__":
    main()
