"""Starting a run on several processes: the `accelerate launch` command a `distributed:` config turns into, and the
store a rank other than 0 sees.

`python -m engine run CONFIG` with `distributed.num_processes` N > 1 runs `accelerate_command(...)`: the same command
line again under `accelerate launch` with N processes (`--multi_gpu`: torchrun underneath, one process per GPU, or
N CPU processes with gloo when there is no GPU; with `distributed.zero_stage` 2 or 3, DeepSpeed ZeRO instead). Each
launched process reads RANK / WORLD_SIZE (engine.distributed); rank 0 registers the run and writes the store, the
others train in step and write nothing (`ReadOnlyStore`).

Not responsible for: what each rank computes (engine/ppo.py, TRL), the process group (engine/distributed.py).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig

# Store methods that change nothing: a rank other than 0 may call them (resume reads checkpoints, TRL methods read
# their metrics back); every other method is a write and does nothing there.
_READS = frozenset({"get_run", "list_runs", "is_cancel_requested", "metrics", "metric_keys", "metrics_wide",
                    "latest_step", "samples", "evaluations", "scores", "checkpoints", "alarms", "alarm_counts",
                    "owned_runs", "url", "lease_s", "owner"})


class ReadOnlyStore:
    """The store as a rank other than 0 sees it: reads go to the real store, writes do nothing (rank 0 writes)."""

    def __init__(self, store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in _READS:
            return getattr(self._store, name)
        return _ignored

    def __repr__(self) -> str:
        return f"ReadOnlyStore({self._store!r})"


def _ignored(*args, **kwargs) -> None:
    return None


def launch_problem(cfg: RunConfig) -> FieldError | None:
    """Why `cfg`'s processes cannot start on this machine (more GPUs than exist, DeepSpeed missing), or None."""
    d = cfg.distributed
    if d.zero_stage and importlib.util.find_spec("deepspeed") is None:
        return FieldError("distributed.zero_stage", f"ZeRO-{d.zero_stage} runs on DeepSpeed, which is not installed "
                                                    "here: `pip install deepspeed` on the GPU machines, or use 0 (DDP)")
    device = cfg.model.device
    if device in ("auto", "cuda") or d.zero_stage:
        import torch

        gpus = torch.cuda.device_count()
        if (device == "cuda" or d.zero_stage) and gpus < d.num_processes:
            return FieldError("distributed.num_processes", f"{d.num_processes} processes need {d.num_processes} GPUs, "
                                                           f"this machine has {gpus}")
        if device == "auto" and 1 < gpus < d.num_processes:
            return FieldError("distributed.num_processes", f"{d.num_processes} processes but {gpus} GPUs: one process "
                                                           f"per GPU (or model.device cpu for CPU processes)")
    return None


def accelerate_command(cfg: RunConfig, engine_args: list[str], port: int | None = None) -> list[str]:
    """The `accelerate launch` command line that runs `python -m engine ENGINE_ARGS` on cfg.distributed's processes.

    DDP (zero_stage 0): `--multi_gpu` (torchrun underneath; on a machine without GPUs the processes use gloo).
    ZeRO: `--use_deepspeed --zero_stage S` (+ CPU offload of the optimizer state, and with stage 3 the weights)."""
    d = cfg.distributed
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(d.num_processes),
           "--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "no"]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    if d.zero_stage:
        offload = "cpu" if d.offload else "none"
        cmd += ["--use_deepspeed", "--zero_stage", str(d.zero_stage), "--offload_optimizer_device", offload]
        if d.zero_stage == 3:
            cmd += ["--offload_param_device", offload, "--zero3_init_flag", "true"]
    else:
        cmd += ["--multi_gpu"]
    return cmd + ["-m", "engine", *engine_args]


def relaunch(cfg: RunConfig, engine_args: list[str]) -> int:
    """Run `python -m engine ENGINE_ARGS` again on cfg.distributed.num_processes processes; their exit code.

    ConfigError, before anything starts, when this machine cannot run them (`launch_problem`)."""
    import os
    import socket
    import subprocess

    problem = launch_problem(cfg)
    if problem is not None:
        raise ConfigError([problem])
    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = accelerate_command(cfg, engine_args, port)
    print(f"launching {cfg.distributed.num_processes} processes: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ)
    if cfg.model.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes even where GPUs exist: gloo
    return subprocess.call(cmd, env=env)
