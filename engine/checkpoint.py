"""Checkpoint files on disk: written atomically, pruned to the newest few, found again for a resume.

A checkpoint is a directory `<run dir>/checkpoints/step-NNNNNN`. It is written under a temporary name and renamed
into place only when complete, so a crash (or a full disk) mid-write leaves the previous checkpoints untouched and
no half-written one that looks complete. What goes inside is the method's business (PPO: engine.methods.ppo; the
TRL methods: the Trainer's own `checkpoint-N` directories, with `trainer_state.json`).

Also here: every random number generator's state (python, numpy, torch CPU and CUDA, and named torch.Generators),
captured as plain lists/tensors (loadable with `torch.load(weights_only=True)`) and restored.

Knows no store and no run: engine.methods.lifecycle records checkpoints in the store.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PPO_STATE_FILE = "state.pt"  # in every PPO checkpoint, written last
TRL_STATE_FILE = "trainer_state.json"  # in every checkpoint the transformers Trainer writes


class CheckpointError(OSError):
    """A checkpoint could not be written (a full disk, a read-only directory); the older ones are intact."""


def step_dir(root: str | Path, step: int) -> Path:
    """Where the checkpoint after `step` lives under `root` (names sort by step)."""
    return Path(root) / f"step-{int(step):06d}"


def is_resumable(path: str | Path) -> bool:
    """True when `path` is a complete checkpoint a run can resume from (PPO's or a Trainer's)."""
    p = Path(path)
    return (p / PPO_STATE_FILE).is_file() or (p / TRL_STATE_FILE).is_file()


def write_atomic(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` to fill a fresh temporary directory beside `dest`, then rename it to `dest`.

    Any error inside `write` removes the temporary directory and raises a CheckpointError saying where and how
    much room is left (a full disk shows as an OSError, or as a RuntimeError from torch.save's zip writer); `dest` then either does not exist or is the previous
    complete checkpoint of that name. Room for one more checkpoint is needed: the oldest is pruned only after.
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write(tmp)
    except Exception as exc:  # an OSError, or torch.save's RuntimeError when the disk fills under its zip writer
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(dest.parent).free / 2**20 if dest.parent.exists() else float("nan")
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(getattr(exc, "errno", None) or errno.EIO,
                              f"could not write the checkpoint {dest}: {what} ({free:.0f} MiB free there)") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():  # the same step saved again (e.g. on cancel right after a periodic save): replace it
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)  # atomic on one filesystem
    return dest


def prune(paths: Iterable[str | Path], keep: int) -> list[Path]:
    """Delete all but the newest `keep` of `paths` (given oldest first); returns the deleted ones."""
    paths = [Path(p) for p in paths]
    doomed = paths[:max(len(paths) - keep, 0)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def remove_partials(root: str | Path) -> None:
    """Delete temporary directories a killed writer left under `root` (they never look complete)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") and (".partial-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state(generators: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every RNG's state: python's, numpy's global, torch's CPU and CUDA default generators, and `generators`."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": as_lists(random.getstate()),
        "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, Any] | None = None) -> None:
    """Put every RNG back where `rng_state` found it."""
    import numpy as np
    import torch

    random.setstate(as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def as_lists(x: Any) -> Any:
    """Tuples (python's RNG state) as lists, which torch.load(weights_only=True) reads back."""
    return [as_lists(v) for v in x] if isinstance(x, tuple) else x


def as_tuples(x: Any) -> Any:
    """The inverse of `as_lists`."""
    return tuple(as_tuples(v) for v in x) if isinstance(x, list) else x
