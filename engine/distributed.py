"""Several processes training one policy (data parallel): which process this is, and sums across processes.

A run on N devices is N processes started by a launcher (`accelerate launch --num_processes N -m engine run ...`,
or torchrun): each sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which `group_from_env` reads to
join the process group (gloo on CPU, NCCL on CUDA). One process (`Group.world == 1`, no launcher) never imports
torch.distributed: `SINGLE` does nothing.

Reductions are sums of sums and counts (a mean over the whole batch is sum over ranks of the local sums divided by
the sum of the local counts), never means of per-rank means: shards hold different numbers of response tokens.
Sums travel as float64 so the order in which ranks add up costs nothing measurable.

Not responsible for: what is reduced (engine/ppo.py, engine/rewards/ensemble.py), the launch (engine/launch.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class Group:
    """This process's place among the run's processes; `world == 1`: alone, every reduction is the identity."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """The process that writes the store, the samples and the checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def sum(self, tensor):
        """The elementwise sum of `tensor` over every process (float64; alone: the tensor itself)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().to(dtype=_float64(), device=_comm_device()).reshape(-1).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.reshape(tensor.shape).to(tensor.device)

    def max(self, tensor):
        """The elementwise maximum of `tensor` over every process."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().to(dtype=_float64(), device=_comm_device()).reshape(-1).clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
        return out.reshape(tensor.shape).to(tensor.device)

    def sum_floats(self, values: list[float]) -> list[float]:
        """Python floats summed over every process (alone: unchanged)."""
        if self.world == 1:
            return list(values)
        import torch

        return [float(v) for v in self.sum(torch.tensor(values, dtype=torch.float64))]

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any (a collective decision: cancel, stop)."""
        if self.world == 1:
            return bool(flag)
        import torch

        return bool(self.max(torch.tensor([1.0 if flag else 0.0]))[0] > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process (picklable objects)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, items: list, what: str = "items") -> list:
        """This rank's contiguous share of `items` (rank r of N takes the r-th of N equal slices)."""
        if len(items) % self.world:
            raise ValueError(f"{len(items)} {what} do not split evenly over {self.world} processes")
        per = len(items) // self.world
        return list(items[self.rank * per:(self.rank + 1) * per])


SINGLE = Group()


def _float64():
    import torch

    return torch.float64


def _comm_device():
    """Where collectives run: NCCL needs CUDA tensors, gloo CPU ones."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        import torch

        return torch.device("cuda", torch.cuda.current_device())
    return "cpu"


def launched_world() -> int:
    """WORLD_SIZE as a launcher (accelerate, torchrun) set it; 1 without one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def collective_timeout_s() -> float:
    """How long a rank waits for the others at a collective: $RLAIF_LAB_DIST_TIMEOUT_S, default 4 hours."""
    try:
        return float(os.environ.get("RLAIF_LAB_DIST_TIMEOUT_S", "14400"))
    except ValueError:
        return 14400.0


def group_from_env() -> Group:
    """The process group a launcher started this process in (joined on first call), or SINGLE without one.

    Backend: NCCL when CUDA is available (each process on cuda:LOCAL_RANK), else gloo."""
    world = launched_world()
    if world == 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Long: rank 0 evaluates the base model (minutes to hours) while the others wait at their first collective.
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(seconds=collective_timeout_s()))
    return Group(rank=dist.get_rank(), world=dist.get_world_size())


def leave_group() -> None:
    """Destroy this process's process group, if it joined one, so each rank ends its gloo / NCCL threads itself.

    Why: left to the interpreter's teardown, a gloo rank that had finished a run was seen to abort ("terminate
    called without an active exception", SIGABRT) and fail the whole launch after rank 0 had completed it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(group: Group, requested: str) -> str:
    """The device this rank trains on: cuda:LOCAL_RANK under a multi-GPU launch, else `requested` unchanged."""
    if group.world == 1 or not requested.startswith("cuda"):
        return requested
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
