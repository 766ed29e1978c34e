"""A real local Ray cluster for the tests: one head node on 127.0.0.1, started by `ray start --head --block`.

`start()` runs the head in a session of its own with a fresh short temporary directory (Ray's unix
sockets live there), a free GCS port, 2 CPUs, no GPU, no dashboard, usage stats off and a small object store, and
waits until a probe joins it; `stop()` ends exactly the processes of that session (SIGTERM, then SIGKILL: `ray
start`, its raylet and GCS, and the worker processes they started) and removes the directory. Nothing else on the machine is touched
(no `ray stop`, which would end every Ray process of the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUM_CPUS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    address: str  # 127.0.0.1:PORT
    process: subprocess.Popen
    directory: str
    log_path: str

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, grace_s: float = 5.0) -> None:
        """End every process of the head's session (it was started in a new one: the session id is its pid):
        `ray start` itself, GCS, raylet, monitors and the worker processes (which take process groups of their own
        but stay in the session). SIGTERM first, SIGKILL after `grace_s`; returns once none is left."""
        sid = self.process.pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 60.0)):
            for pid in session_members(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                self.process.poll()  # reap `ray start` (our child); the others are reaped by init
                if not session_members(sid, live_only=True):
                    break
                time.sleep(0.2)
        self.process.poll()
        shutil.rmtree(self.directory, ignore_errors=True)


def session_members(sid: int, live_only: bool = False) -> list[int]:
    """Pids of the processes in session `sid` (from /proc; zombies left out with live_only)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and not (live_only and fields[0] == "Z"):
            pids.append(int(entry))
    return pids


def start(timeout: float = 240.0) -> RayHead:
    """Start a head node and wait until it answers (a probe joins it); RuntimeError with its log otherwise."""
    from engine.ray_cluster import RayUnavailable, cluster_info

    directory = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log_path = os.path.join(directory, "head.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", str(NUM_CPUS), "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
             "--object-store-memory", str(100 * 2**20), "--temp-dir", directory],
            cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    head = RayHead(address, process, directory, log_path)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            info = cluster_info(address, timeout=60)
            if info.live_nodes:
                return head
        except RayUnavailable as exc:
            last = exc
        time.sleep(1.0)
    head.stop()
    raise RuntimeError(f"the Ray head did not start ({last}); its log:\n{head.log()}")
