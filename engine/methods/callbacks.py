"""The bridge from TRL trainers to the run store: a `transformers.TrainerCallback`.

Responsible for: writing every dict a TRL trainer logs (`on_log`) to the store under the method's namespace
(`<prefix><trl name>`, e.g. "dpo/rewards/margins"; evaluation logs as "<prefix>eval/<name>"), adding the lab's
common names for the same numbers where a mapping is given (e.g. GRPO's `reward` → "env/reward_mean"), recording
progress, telling the runner's progress listener, and stopping training when the run's cancellation was requested
(`control.should_training_stop` in `on_step_end`, so at most one optimizer step runs after the request).

Not responsible for: building trainers, or deciding what a cancelled run means (the caller reads `.cancelled`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from engine.distributed import group_from_env
from engine.progress import RunCancelled, RunInterrupted, stop_reason, stop_requested

# Logged once at the end of `Trainer.train()`: run totals, not per-step curves; kept in `final` for the summary.
END_OF_TRAINING_KEYS = frozenset({"train_runtime", "train_samples_per_second", "train_steps_per_second",
                                  "total_flos", "train_loss"})


def store_metrics(logs: dict[str, Any], prefix: str, mapping: dict[str, str] | None = None) -> dict[str, float]:
    """TRL's log dict → store keys: numbers only, namespaced with `prefix`, plus the mapped common names.

    "eval_<name>" (TRL's evaluation logs) becomes "<prefix>eval/<name>"; a key of `mapping` is also written under
    its mapped name. Non-numeric values (TRL can log strings or tables) are dropped.
    """
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else key
        out[prefix + name] = float(value)
        if mapping and key in mapping:
            out[mapping[key]] = float(value)
    return out


class StoreCallback(TrainerCallback):
    """Sends a TRL trainer's logs to `store` for run `run_id` and honours cancellation.

    prefix: namespace of the TRL keys ("dpo/", "rm/", "rloo/", "grpo/"). mapping: TRL key → the lab's common key.
    total_steps: the run's planned optimizer steps (for progress). notify: the runner's progress listener (called
    with engine.progress.Progress). extra_metrics: called at every log, its dict merged in (judge accounting, reward
    signals). on_step: called with the step number after each optimizer step (e.g. to store samples).
    on_checkpoint: called with (step, directory) after the Trainer saved a checkpoint (to record it).
    """

    def __init__(self, store, run_id: str, prefix: str, *, total_steps: int,
                 mapping: dict[str, str] | None = None,
                 notify: Callable[[Any], None] | None = None,
                 extra_metrics: Callable[[], dict[str, float]] | None = None,
                 on_step: Callable[[int], None] | None = None,
                 on_checkpoint: Callable[[int, Path], None] | None = None) -> None:
        self.store, self.run_id, self.prefix = store, run_id, prefix
        self.total_steps = int(total_steps)
        self.mapping = dict(mapping or {})
        self.notify = notify
        self.extra_metrics = extra_metrics
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint
        self.cancelled = False  # stopped by the run's cancel request
        self.interrupted = False  # stopped by engine.progress.request_stop()
        self.final: dict[str, float] = {}  # END_OF_TRAINING_KEYS, once training ends
        self.last: dict[str, float] = {}  # the latest per-step metrics written

    # Trainer → callback hooks ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.store.set_progress(self.run_id, state.global_step, self.total_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        for key in END_OF_TRAINING_KEYS & logs.keys():
            self.final[key] = float(logs.pop(key))
        if self.final and not any(k != "epoch" for k in logs):
            return  # the end-of-training log carries only totals (and the epoch): nothing per step left
        metrics = store_metrics(logs, self.prefix, self.mapping)
        if not metrics:
            return
        is_eval = any(k.startswith("eval_") for k in logs)  # Trainer.evaluate(): held-out pairs, not a step
        if is_eval:  # its epoch repeats the last step's (one value per step and key)
            metrics.pop(self.prefix + "epoch", None)
        if self.extra_metrics is not None and not is_eval:
            metrics.update(self.extra_metrics())
        self.store.log_metrics(self.run_id, state.global_step, metrics)
        if is_eval:
            return
        self.last = metrics
        if self.notify is not None:
            from engine.progress import Progress

            step = state.global_step
            self.notify(Progress("train", step, self.total_steps, f"step {step}/{self.total_steps}",
                                 {k: v for k, v in metrics.items() if math.isfinite(v)}))

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.on_step is not None:
            self.on_step(step)
        self.store.set_progress(self.run_id, step, self.total_steps)
        self.interrupted = stop_requested()
        stop = self.interrupted or self.store.is_cancel_requested(self.run_id)
        # Several processes (accelerate launch): every rank stops at the same step, or one would wait for the others.
        if group_from_env().any(stop):
            self.cancelled = not self.interrupted
            control.should_training_stop = True
            if args.save_strategy != "no":  # keep the steps since the last checkpoint: a resume starts here
                control.should_save = True
        return control

    def raise_if_stopped(self) -> None:
        """After training: RunInterrupted / RunCancelled when it stopped early for either reason."""
        if self.interrupted:
            raise RunInterrupted(stop_reason())
        if self.cancelled:
            raise RunCancelled()

    def on_save(self, args, state, control, **kwargs):
        if self.on_checkpoint is not None:  # the Trainer has written (and rotated) its checkpoint-N directory
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            self.on_checkpoint(state.global_step, Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
