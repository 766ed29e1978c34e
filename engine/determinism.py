"""Deterministic mode: a seed pins a run (same machine, same settings → the same metrics, step by step).

What varies between two runs of one seed otherwise: the number of torch threads (a matmul's reduction order follows
the threads, and the README saw KL 6.5 vs 13.6 from the thread count alone), kernels that pick a nondeterministic
algorithm (atomics on GPUs), and unseeded RNGs (Python's, numpy's, torch's). `deterministic_run` fixes all three for
the duration of a run and puts the process back as it was afterwards (the worker runs in a long-lived process).

Not responsible for: the run's own seeded streams (PPO's mini-batch generator, the evaluation seed), which the
trainers and the evaluation own.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

THREADS_ENV_VAR = "RLAIF_LAB_THREADS"  # not OMP_NUM_THREADS: launchers set that to 1 per rank, and DDP ranks keep every core


def available_cores() -> int:
    """The CPU cores a run in this process may use: the cores it may run on, at most $RLAIF_LAB_THREADS when set.

    Why the variable counts: several workers on one machine each default to every core, and torch's spinning
    OpenMP threads then starve each other (two 2-thread workers on 2 cores ran tiny runs 5-10x slower than one,
    bench/README.md "bench_workers"); the operator gives each worker its share with `engine worker --threads N`,
    which sets $RLAIF_LAB_THREADS, or by exporting it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        limit = int(os.environ.get(THREADS_ENV_VAR, "0"))
    except ValueError:
        limit = 0
    return min(cores, limit) if limit > 0 else cores


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (every device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA and MPS generators too


@contextlib.contextmanager
def deterministic_run(seed: int, *, enabled: bool = True, threads: int = 0,
                      device: str = "cpu") -> Iterator[dict[str, Any]]:
    """Seed everything; with `enabled`, also fix torch's thread count (`threads`, 0: every available core) and, when
    the run uses an accelerator (`device` not "cpu"), turn on deterministic algorithms (`warn_only`: an op without a
    deterministic kernel warns instead of failing the run). Yields what was set, for the run's record; thread count
    and the deterministic flag are restored on exit.

    On CPU the flag is left off: at a fixed thread count CPU kernels already repeat exactly (two runs of one seed
    agree with and without it, bench/bench_determinism.py), and it made tiny-model PPO steps 6-10 % slower there."""
    import torch

    saved_threads = torch.get_num_threads()
    saved_flag = torch.are_deterministic_algorithms_enabled()
    saved_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_cudnn = torch.backends.cudnn.benchmark
    info: dict[str, Any] = {"deterministic": bool(enabled), "seed": seed}
    try:
        if enabled:
            torch.set_num_threads(threads or available_cores())
            if torch.device(device).type != "cpu":
                # cuBLAS needs a fixed workspace for deterministic matmuls; read when CUDA first initialises.
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
        elif threads:
            torch.set_num_threads(threads)
        info["threads"] = torch.get_num_threads()
        info["deterministic_kernels"] = torch.are_deterministic_algorithms_enabled()
        seed_everything(seed)
        yield info
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_flag, warn_only=saved_warn)
        torch.backends.cudnn.benchmark = saved_cudnn
