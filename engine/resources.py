"""Whether a run's resources (cfg.resources: GPUs, CPUs, memory) can be had where it will execute.

Responsible for: refusing, before anything is queued, a run that asks for more GPUs than this machine has (local
workers) or for more GPUs / CPUs / memory than any single node of the Ray cluster has, each error naming its field;
and the Ray task options a run's resources translate to. Reads nothing but the config and what it is given
(torch is imported only to count this machine's GPUs, and only when a run asks for some).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.config import FieldError, ResourceSettings, RunConfig

if TYPE_CHECKING:
    from engine.ray_cluster import ClusterInfo

GIB = 2**30


def local_gpu_count() -> int:
    """How many CUDA devices this process sees (0 without CUDA, or when torch cannot tell)."""
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA driver: no GPU to give
        return 0


def local_problems(cfg: RunConfig, gpu_count: int | None = None) -> list[FieldError]:
    """Why this machine cannot give the run what it asks for (more GPUs than it has); [] when it can.
    `gpu_count` None: counted here (torch.cuda.device_count())."""
    gpus = cfg.resources.gpus
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus <= 0:
        return []  # None (one device: a GPU where there is one, else the CPU) or 0 fit anywhere
    have = local_gpu_count() if gpu_count is None else gpu_count
    if gpus > have:
        return [FieldError("resources.gpus", f"asks for {gpus} GPU{'s' if gpus != 1 else ''}; this machine has "
                                             f"{have} (torch.cuda.device_count()): ask for at most {have}"
                                             + (" or leave it empty (one device: the CPU here)" if not have else ""))]
    return []


def gpus_for(res: ResourceSettings, cluster_has_gpus: bool) -> int:
    """The GPUs a run gets: its own number, or (None: one device) one GPU where the cluster has any, else none."""
    if res.gpus is None:
        return 1 if cluster_has_gpus else 0
    return int(res.gpus)


def _plural(n: float, unit: str) -> str:
    return f"{n:g} {unit}{'' if n == 1 else 's'}"


def cluster_problems(cfg: RunConfig, cluster: ClusterInfo) -> list[FieldError]:
    """Why no single live node of `cluster` can hold the run (a task runs on one node), each naming its field:
    resources.gpus / resources.cpus / resources.memory_gb when no node has that much, `resources` when each fits
    somewhere but no node has all three together; [] when some node can."""
    res = cfg.resources
    nodes = cluster.live_nodes
    if not nodes:
        return [FieldError("resources", f"the Ray cluster at {cluster.address} has no live node")]
    want = {"gpus": gpus_for(res, cluster.has_gpus), "cpus": float(res.cpus), "memory_gb": float(res.memory_gb)}
    units = {"gpus": "GPU", "cpus": "CPU", "memory_gb": "GiB"}
    problems = []
    for key, need in want.items():
        most = max(getattr(n, key) for n in nodes)
        if need > most:
            amount = f"{need:g} GiB of memory" if key == "memory_gb" else _plural(need, units[key])
            has = f"{most:g} GiB" if key == "memory_gb" else f"{most:g}"
            problems.append(FieldError(f"resources.{key}", f"asks for {amount}; the largest node of the Ray cluster "
                                                           f"at {cluster.address} has {has} ({len(nodes)} live "
                                                           f"node{'s' if len(nodes) != 1 else ''})"))
    if problems:
        return problems
    if not any(all(getattr(n, key) >= need for key, need in want.items()) for n in nodes):
        return [FieldError("resources", f"no single node of the Ray cluster at {cluster.address} has "
                                        f"{_plural(want['gpus'], 'GPU')}, {_plural(want['cpus'], 'CPU')} and "
                                        f"{want['memory_gb']:g} GiB together (a run executes on one node)")]
    return []


def ray_options(res: ResourceSettings, cluster_has_gpus: bool) -> dict[str, Any]:
    """The Ray task options that reserve a run's resources: num_gpus, num_cpus and (when asked for) memory."""
    options: dict[str, Any] = {"num_gpus": gpus_for(res, cluster_has_gpus), "num_cpus": res.cpus}
    if res.memory_gb > 0:
        options["memory"] = int(res.memory_gb * GIB)
    return options


def fits_now(res: ResourceSettings, cluster_has_gpus: bool, free: dict[str, float]) -> bool:
    """Whether the cluster's free resources (ray.available_resources(): CPU, GPU, memory in bytes) cover the run
    now (cluster-wide; Ray places it on a node that has them, or it waits there)."""
    options = ray_options(res, cluster_has_gpus)
    return (free.get("GPU", 0.0) >= options["num_gpus"] and free.get("CPU", 0.0) >= options["num_cpus"]
            and free.get("memory", 0.0) >= options.get("memory", 0))
