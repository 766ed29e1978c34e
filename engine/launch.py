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


def _free_port() -> int:
    import socket

    with socket.socket() as s:  # a free port for the process group's rendezvous
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def execute_launched(store, record, cfg: RunConfig, executor_id: str) -> bool:
    """Execute a run `store` has claimed whose config asks for several processes, as a worker (or a Ray task) does:
    launch them (`accelerate launch ... -m engine adopt RUN --from OWNER`, the store's URL in the environment, never
    on the command line); their rank 0 adopts the lease (Store.adopt_run) and writes the store, and this process
    heartbeats the run until it does. A launch that ends before rank 0 adopted the run fails it with the launcher's
    exit status and its last lines of output. The processes' output goes to this process's stderr (the worker log).

    Returns False when interrupted (a second signal: the processes get SIGTERM, rank 0 checkpoints and records the
    run as interrupted), True otherwise. The first stop of a worker reaches the run through its cancel flag."""
    import collections
    import os
    import signal
    import subprocess
    import threading

    problem = launch_problem(cfg)
    if problem is not None:
        store.set_status(record.id, "failed", error=f"{problem.field}: {problem.message} (on {executor_id})")
        return True
    cmd = accelerate_command(cfg, ["adopt", record.id, "--from", store.owner], _free_port())
    env = dict(os.environ, RLAIF_LAB_DB=store.url)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a fresh process group, whatever launched this process
    if cfg.model.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU processes even where GPUs exist: gloo
    store.hand_over(record.id)  # keep its lease alive until rank 0 adopts it
    tail: collections.deque[str] = collections.deque(maxlen=12)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)

    def relay() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            sys.stderr.write(line)

    copier = threading.Thread(target=relay, name="launch-output", daemon=True)
    copier.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun passes it on; rank 0 stops at the step boundary
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        return False
    finally:
        copier.join(10)
    now = store.get_run(record.id)
    if now.status == "running" and now.owner == store.owner:  # rank 0 never adopted the run: nothing of it ran
        last = " | ".join(line for line in tail if line.strip())[-600:]
        store.set_status(record.id, "failed", error=f"its {cfg.distributed.num_processes} processes ended (exit "
                                                    f"status {code}) before starting the run (on {executor_id}): "
                                                    f"{last or 'no output'}")
    else:  # adopted: rank 0 recorded its end (or, killed, left it to expire); it is no longer this process's
        store.abandon(record.id)
    return True
