"""Which executor runs queued runs (local workers, or a Ray cluster) and what the Ray cluster has.

Responsible for: the executor setting ($RLAIF_LAB_EXECUTOR, $RAY_ADDRESS), the cluster's address checked before
anything is queued (`check_address`: a misspelt address, a host that does not resolve, nothing answering), and the
cluster's nodes and free resources (`cluster_info`), read by a short-lived probe process so the lab's own process
never becomes a Ray driver.

Not responsible for: sending runs to the cluster (engine.ray_dispatcher) or deciding whether a run fits
(engine.resources). Imports no Ray at module level: `ray` is imported only by the probe and the dispatcher.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXECUTOR_ENV_VAR = "RLAIF_LAB_EXECUTOR"  # local | ray; unset: ray when $RAY_ADDRESS is set, else local
RAY_ADDRESS_ENV_VAR = "RAY_ADDRESS"  # the cluster's GCS address, host:port (Ray's own variable)
EXECUTORS = ("local", "ray")
CONNECT_TIMEOUT_S = 5.0  # a TCP connection to the head (a firewalled host would otherwise hang for minutes)
PROBE_TIMEOUT_S = 90.0  # starting Python, importing Ray and joining the cluster as a driver (seconds on a busy node)
GIB = 2**30
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})$")


class RayUnavailable(ValueError):
    """The Ray cluster cannot be used: its address is misspelt, does not resolve, or nothing (no Ray) answers there.
    Raised before anything is queued or claimed."""


@dataclass(frozen=True)
class Executor:
    """Where queued runs execute: "local" (worker processes, `python -m engine worker`) or "ray" (a dispatcher
    sends each run to the Ray cluster at `address` as a task)."""

    kind: str = "local"
    address: str | None = None

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Executor:
        """The executor $RLAIF_LAB_EXECUTOR names (default: ray when $RAY_ADDRESS is set, else local), with the
        address from $RAY_ADDRESS. RayUnavailable for an unknown executor or ray without an address."""
        env = os.environ if env is None else env
        address = (env.get(RAY_ADDRESS_ENV_VAR) or "").strip() or None
        kind = (env.get(EXECUTOR_ENV_VAR) or "").strip().lower() or ("ray" if address else "local")
        if kind not in EXECUTORS:
            raise RayUnavailable(f"${EXECUTOR_ENV_VAR} must be one of {', '.join(EXECUTORS)}, got {kind!r}")
        if kind == "ray" and not address:
            raise RayUnavailable(f"${EXECUTOR_ENV_VAR} is ray but ${RAY_ADDRESS_ENV_VAR} is not set: set it to the "
                                 "cluster head's host:port (the address `ray start --head` prints)")
        return cls(kind, address if kind == "ray" else None)

    def describe(self) -> str:
        return f"the Ray cluster at {self.address}" if self.is_ray else "local workers"


def parse_address(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address "host:port" (the head's GCS port, 6379 by default). RayUnavailable naming
    what is wrong otherwise (a ray:// client address needs ray[client], which the lab does not install)."""
    text = (address or "").strip()
    if text.startswith("ray://"):
        raise RayUnavailable(f"Ray address {text!r}: a ray:// (Ray Client) address is not supported; give the "
                             "head's GCS address host:port (e.g. 10.0.0.5:6379)")
    if "://" in text:
        raise RayUnavailable(f"Ray address {text!r} is misspelt: give the head's GCS address as host:port, no "
                             "scheme (e.g. 10.0.0.5:6379)")
    m = _HOST_PORT.match(text)
    if not m:
        raise RayUnavailable(f"Ray address {address!r} is misspelt: it reads host:port (the head's GCS address, "
                             "e.g. 10.0.0.5:6379, as `ray start --head` prints it)")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise RayUnavailable(f"Ray address {address!r}: port {port} is not a TCP port (1-65535)")
    return m.group("host").strip("[]"), port


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise RayUnavailable unless something accepts a TCP connection at `address` (the cluster head's GCS port).
    Cheap (one connection), so it runs before every run is queued for a Ray cluster."""
    host, port = parse_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RayUnavailable(f"the Ray cluster at {address} cannot be reached: the host name {host!r} does not "
                             f"resolve ({exc.strerror or exc}); check $RAY_ADDRESS") from None
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                s.connect(sockaddr)
                return
        except OSError as exc:
            last = exc
    why = "the connection timed out" if isinstance(last, TimeoutError) else (
        "the connection was refused" if isinstance(last, ConnectionRefusedError) else str(last))
    raise RayUnavailable(f"the Ray cluster at {address} cannot be reached: nothing answers at {host}:{port} ({why}); "
                         "is the head running (`ray start --head`), and $RAY_ADDRESS its host:port?")


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster: its totals (what a single task there could ever get)."""

    node_id: str
    host: str
    alive: bool
    cpus: float
    gpus: float
    memory_gb: float


@dataclass(frozen=True)
class ClusterInfo:
    """The cluster's nodes and its free resources now (cluster-wide: ray.available_resources())."""

    address: str
    nodes: tuple[NodeInfo, ...]
    free_cpus: float
    free_gpus: float
    free_memory_gb: float
    total: dict[str, float] = field(default_factory=dict)  # CPU, GPU, memory_gb of the live nodes together

    @property
    def live_nodes(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.alive]

    @property
    def has_gpus(self) -> bool:
        return any(n.gpus > 0 for n in self.live_nodes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClusterInfo:
        data = json.loads(text)
        data["nodes"] = tuple(NodeInfo(**n) for n in data["nodes"])
        return cls(**data)

    def describe(self) -> str:
        """One line: "2 nodes · free 3 of 4 CPUs, 1 of 1 GPU, 10.5 of 12.0 GiB"."""
        n = len(self.live_nodes)
        t = self.total
        return (f"{n} node{'s' if n != 1 else ''} · free {self.free_cpus:g} of {t.get('CPU', 0):g} CPUs, "
                f"{self.free_gpus:g} of {t.get('GPU', 0):g} GPUs, {self.free_memory_gb:.1f} of "
                f"{t.get('memory_gb', 0):.1f} GiB memory")


def connect(address: str, **kwargs) -> None:
    """Join the cluster at `address` as a driver (this process), quietly; RayUnavailable when it cannot."""
    import ray

    check_address(address)
    try:
        ray.init(address=address, configure_logging=False, **kwargs)
    except Exception as exc:  # a port that answers but is no Ray head, a version mismatch
        raise RayUnavailable(f"the Ray cluster at {address} refused this driver: {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}") from None


def cluster_info_here(address: str) -> ClusterInfo:
    """The cluster's nodes and free resources, read in a process that has joined it (`connect`)."""
    import ray

    nodes = tuple(NodeInfo(node_id=str(n.get("NodeID", ""))[:16], host=str(n.get("NodeManagerAddress", "?")),
                           alive=bool(n.get("Alive")), cpus=float(n.get("Resources", {}).get("CPU", 0)),
                           gpus=float(n.get("Resources", {}).get("GPU", 0)),
                           memory_gb=round(float(n.get("Resources", {}).get("memory", 0)) / GIB, 2))
                  for n in ray.nodes())
    free = ray.available_resources()
    live = [n for n in nodes if n.alive]
    total = {"CPU": sum(n.cpus for n in live), "GPU": sum(n.gpus for n in live),
             "memory_gb": round(sum(n.memory_gb for n in live), 2)}
    return ClusterInfo(address=address, nodes=nodes, free_cpus=float(free.get("CPU", 0)),
                       free_gpus=float(free.get("GPU", 0)),
                       free_memory_gb=round(float(free.get("memory", 0)) / GIB, 2), total=total)


def cluster_info(address: str, timeout: float = PROBE_TIMEOUT_S) -> ClusterInfo:
    """The cluster's nodes and free resources, read by a probe process (`python -m engine.ray_cluster ADDRESS`) that
    joins the cluster and exits, so the caller (the lab's server) never becomes a Ray driver. RayUnavailable
    when the address is wrong, nothing answers, or the probe cannot join in `timeout` seconds."""
    check_address(address)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + os.environ["PYTHONPATH"]
                                               if os.environ.get("PYTHONPATH") else "")}
    try:
        out = subprocess.run([sys.executable, "-m", "engine.ray_cluster", address], capture_output=True, text=True,
                             timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RayUnavailable(f"the Ray cluster at {address} did not answer as a Ray head within {timeout:g} s "
                             "(is that the head's GCS port?)") from None
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RayUnavailable(last if last.startswith("the Ray cluster") else
                             f"the Ray cluster at {address} could not be read: {last[:300]}")
    return ClusterInfo.from_json(lines[-1])


def main(argv: list[str] | None = None) -> int:
    """The probe: join the cluster at argv[0], print its ClusterInfo as one JSON line, leave."""
    import ray

    address = (argv if argv is not None else sys.argv[1:])[0]
    try:
        connect(address, log_to_driver=False)
        print(cluster_info_here(address).to_json(), flush=True)
    except RayUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
