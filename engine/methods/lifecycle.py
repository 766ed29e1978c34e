"""The one lifecycle of a policy-training run, written once for every method (ppo, dpo, dpo_ai, rloo, grpo).

    prompts -> load (method's own pieces, evaluator, policy) -> before-evaluation -> train -> save
            -> after-evaluation -> summary

A method says only how it trains: a `PolicyMethod` subclass with `train(run)` (and, optionally, `load(run)` for
what it needs before the policy loads, `save_policy` for what its final checkpoint holds, `read_checkpoint` to
resume, `close()`). `run_policy(method, ...)` does the rest. Every number reaches the store as soon as it exists.

Checkpoints and resume: a method saves periodic checkpoints with `run.save_checkpoint(step, write)` (atomic,
recorded in the store, pruned to checkpoint.keep). `run_policy(..., resume=True)` finds the newest checkpoint the
method can read (a damaged one is skipped for the one before), deletes what the run stored after that step
(metrics, samples, the after-evaluation), reads the before-evaluation back instead of redoing it, and hands the
checkpoint to `train` as `run.resume`.

Also here, because every method needs them: `prepare_prompts` (the train / validation / test split, the same for
all methods; the run evaluates the split `evaluation.split` names), deterministic mode around the whole run
(engine.determinism) and `peak_rss_gb`.

Not responsible for: run status (engine.runner records it), any training loop (the method modules), or which
method runs (the runner dispatches).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig
from engine.progress import CancelCheck, Notify, Progress

log = logging.getLogger(__name__)


def split_prompts(cfg: RunConfig) -> tuple[list[str], list[str], list[str]]:
    """Train, validation and test prompts (untruncated; engine.data.split_three: seeded, disjoint, one prompt per
    dialogue). Raises ConfigError on an empty or too small source."""
    from engine import data

    d = cfg.data
    try:
        prompts = data.load_prompts(data.resolve_source(d.source), template=d.template,
                                    min_chars=d.min_chars, max_chars=d.max_chars)
        test_size = d.holdout_size if cfg.evaluation.enabled else 0
        train, validation, test = data.split_three(prompts, test_size=test_size, validation_size=d.validation_size,
                                                   train_size=d.train_size, seed=d.split_seed)
    except (ValueError, OSError, RuntimeError, csv.Error) as exc:  # RuntimeError: the hub unreachable (offline)
        message = str(exc) if len(str(exc)) <= 300 else str(exc)[:299] + "…"
        raise ConfigError([FieldError("data.source", message)]) from exc
    if not train:
        raise ConfigError([FieldError("data.train_size", "no training prompts left after the hold-out split")])
    return train, validation, test


def kept_out_prompts(cfg: RunConfig) -> list[str]:
    """Every prompt no training may see (validation + test, untruncated): preference pairs on these dialogues are
    dropped, so neither the numbers that choose settings nor the reported ones come from trained-on dialogues."""
    _, validation, test = split_prompts(cfg)
    return validation + test


def prepare_prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Train prompts and the prompts the run evaluates: the split `evaluation.split` names (test by default;
    validation while choosing settings). Raises ConfigError on an empty or too small source."""
    train, validation, test = split_prompts(cfg)
    return train, (validation if cfg.evaluation.split == "validation" else test)


def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def mean(values: Sequence[float]) -> float:
    """The mean, or NaN for no values."""
    return float(sum(values) / len(values)) if values else math.nan


@dataclass
class Resume:
    """The checkpoint a resumed run continues from: its step, directory, and what the method read from it."""

    step: int
    path: Path
    state: Any


class PolicyRun:
    """One policy-training run's shared state: config, store, prompts, evaluator, policy, "before" scores.

    Built and driven by `run_policy`; a method's `train(run)` reads `run.bundle`, `run.train_prompts`,
    `run.device`, `run.out_dir` and reports through `run.notify` / `run.check_cancel` / `run.store`.
    """

    def __init__(self, cfg: RunConfig, store, run_id: str, notify: Notify, check_cancel: CancelCheck) -> None:
        self.cfg, self.store, self.run_id = cfg, store, run_id
        self.notify, self.check_cancel = notify, check_cancel
        self.t_start = time.perf_counter()
        self.device = "cpu"
        self.bundle = None
        self.evaluator = None
        self.train_prompts: list[str] = []
        self.holdout: list[str] = []
        self.raw_train: list[str] = []  # untruncated
        self.raw_holdout: list[str] = []  # untruncated, to match against HH dialogues
        self.raw_validation: list[str] = []  # untruncated validation split (empty without one)
        self.raw_kept_out: list[str] = []  # validation + test, untruncated: no training pair may come from these
        self.validation: list[str] = []  # the validation prompts cut to the token budget (the alarms' probe)
        self.before: tuple[list[float], list[int], list[float]] | None = None
        self.relevance = None  # engine.relevance.RelevanceScorer, when evaluation.relevance and it loads
        self.relevance_error = ""  # why relevance is not measured, when it was asked for
        self.relevance_scores: dict[str, list[float]] = {}  # "before" / "after": per response
        self.out_dir = Path(cfg.output_dir) / run_id
        # Absolute: the store records checkpoint paths, and the UI or the next worker may run in another directory.
        self.checkpoint_dir = (self.out_dir / "checkpoints").resolve()
        self.resume: Resume | None = None
        self.resuming = False  # set by run_policy: a resumed run's weights come from its own checkpoint
        self.init_source = None  # engine.policy_source.PolicySource: model.init_from, checked in prepare()
        # This process among the run's processes (engine.distributed): several under `accelerate launch`, where only
        # rank 0 evaluates, saves and writes the store (the others get a ReadOnlyStore).
        from engine.distributed import SINGLE

        self.group = SINGLE
        self.determinism: dict[str, Any] = {}  # what deterministic mode set (engine.determinism.deterministic_run)
        # Wall seconds per phase (load, evaluate_before, train, evaluate_after, save), in the summary: where a run's
        # time goes. A resumed run counts this process's phases only.
        self.phase_seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, phase: str):
        """Add the wall time of the enclosed block to phase_seconds[phase]."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + time.perf_counter() - t0

    # ---- the steps, in order -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Validate the config and split the prompts (text only: bad input fails before any model loads)."""
        self.cfg.check()
        if self.cfg.model.init_from and not self.resuming:
            from engine.policy_source import resolve_init_from

            # again in the worker: the source run may have been deleted since this run was queued
            self.init_source = resolve_init_from(self.store, self.cfg)
        self.notify(Progress("data", message="loading prompts"))
        self.raw_train, validation, test = split_prompts(self.cfg)
        self.raw_holdout = validation if self.cfg.evaluation.split == "validation" else test
        self.raw_validation, self.raw_kept_out = validation, validation + test

    def load(self, seed: int) -> None:
        """Load the evaluator and the policy (seeded), and cut the prompts to the token budget."""
        import torch

        from engine import data as data_mod
        from engine.assets import builtin_first_use
        from engine.models import load_policy
        from engine.rewards import build_backend

        cfg = self.cfg
        if cfg.evaluation.enabled and self.group.is_main:  # several processes: rank 0 evaluates
            self.notify(Progress("load", message=f"loading the evaluator ({cfg.evaluation.evaluator.display_name})"))
            self.evaluator = build_backend(cfg.evaluation.evaluator, device=self.device)
            if cfg.evaluation.relevance:
                from engine.relevance import default_scorer

                try:
                    self.relevance = default_scorer()
                except (ImportError, OSError) as exc:  # the package missing or its files unreadable
                    self.relevance_error = str(exc)
                    log.warning("relevance not measured: %s", exc)
        torch.manual_seed(seed)
        first = builtin_first_use(cfg.model.name_or_path)
        self.notify(Progress("load", message=first or f"loading the policy {cfg.model.name_or_path}"))
        self.bundle = load_policy(cfg.model)
        if self.init_source is not None:  # continue training: the policy (not the reference) starts from it
            from engine.policy_source import apply_init

            self.notify(Progress("load", message=f"starting from {self.init_source.describe()}"))
            apply_init(self.bundle, self.init_source)
        self.check_cancel()
        tok, budget, template = self.bundle.tokenizer, cfg.data.max_prompt_tokens, cfg.data.template
        self.train_prompts = data_mod.truncate_left(self.raw_train, tok, budget, template=template)
        self.holdout = data_mod.truncate_left(self.raw_holdout, tok, budget, template=template)
        self.validation = data_mod.truncate_left(self.raw_validation, tok, budget, template=template)

    def evaluate(self, which: str) -> tuple[list[float], list[int], list[float]]:
        """Responses to the hold-out prompts ("before": the base model; "after": the trained policy), scored by the
        evaluator and stored; returns (toxicity, lengths, KL to the base per response)."""
        from engine.evaluate import evaluate_side, relevance_of

        def prog(done: int, total: int) -> None:
            self.notify(Progress(f"eval_{which}", done, total, f"evaluating {which}: {done}/{total} responses",
                                 unit="response"))
            self.check_cancel()

        rows, tox, lengths, kls = evaluate_side(self.bundle, self.evaluator, self.holdout, self.cfg.generation,
                                                self.cfg.evaluation, which=which,
                                                max_prompt_tokens=self.cfg.data.max_prompt_tokens, progress=prog,
                                                relevance_scorer=self.relevance, template=self.cfg.data.template)
        self.store.add_evaluations(self.run_id, which, rows)
        self.relevance_scores[which] = relevance_of(rows)
        return tox, lengths, kls

    def stored_before(self) -> tuple[list[float], list[int], list[float]] | None:
        """The "before" side as the store holds it (a resumed run does not redo it); None when there is none."""
        rows = self.store.evaluations(self.run_id, "before")
        if rows.empty:
            return None
        self.relevance_scores["before"] = [float(s["relevance"]) for s in rows["scores"] if "relevance" in s]
        return (rows["toxicity"].tolist(), [int(s.get("length", 0)) for s in rows["scores"]],
                [float(s.get("kl", math.nan)) for s in rows["scores"]])

    # ---- checkpoints --------------------------------------------------------------------------------
    def checkpoint_due(self, step: int) -> bool:
        """True when a periodic checkpoint falls after `step` (every checkpoint.every_steps steps)."""
        every = self.cfg.checkpoint.every_steps
        return every > 0 and step % every == 0

    def save_checkpoint(self, step: int, write: Callable[[Path], None]) -> Path:
        """Write a checkpoint after `step` (`write(dir)` fills a temporary directory, renamed when complete), record
        it in the store, and delete the oldest beyond checkpoint.keep."""
        from engine import checkpoint

        try:
            path = checkpoint.write_atomic(checkpoint.step_dir(self.checkpoint_dir, step), write)
        except checkpoint.CheckpointError as exc:
            kept = [c.step for c in self.store.checkpoints(self.run_id) if checkpoint.is_resumable(c.path)]
            where = f"the checkpoint after step {kept[-1]} is intact" if kept else "no earlier checkpoint"
            raise checkpoint.CheckpointError(exc.errno, f"{exc.strerror}; {where}: make room, then `python -m "
                                                        f"engine resume {self.run_id}`") from exc
        self.store.add_checkpoint(self.run_id, step, str(path))
        self.prune_checkpoints()
        return path

    def record_checkpoint(self, step: int, path: str | Path) -> None:
        """Record a checkpoint someone else wrote (a TRL Trainer's `checkpoint-N`); pruning is the Trainer's."""
        self.store.add_checkpoint(self.run_id, step, str(Path(path).resolve()))
        for rec in self.store.checkpoints(self.run_id):
            if not Path(rec.path).exists():
                self.store.delete_checkpoint(self.run_id, rec.path)

    def prune_checkpoints(self) -> None:
        from engine import checkpoint

        records = [r for r in self.store.checkpoints(self.run_id)
                   if Path(r.path).resolve().parent == self.checkpoint_dir]
        for path in checkpoint.prune([r.path for r in records], self.cfg.checkpoint.keep):
            self.store.delete_checkpoint(self.run_id, path)

    def find_resume(self, read: Callable[[Path], Any]) -> Resume | None:
        """The newest recorded checkpoint that `read(path)` loads; damaged ones are skipped (and logged)."""
        from engine import checkpoint

        checkpoint.remove_partials(self.checkpoint_dir)
        for rec in reversed(self.store.checkpoints(self.run_id)):
            path = Path(rec.path)
            if not checkpoint.is_resumable(path):
                continue
            try:
                return Resume(rec.step, path, read(path))
            except Exception as exc:  # a damaged file: fall back to the checkpoint before it
                log.warning("run %s: checkpoint %s is unreadable (%s: %s); trying an older one", self.run_id, path,
                            type(exc).__name__, exc)
        return None

    def adopt(self, trainer) -> None:
        """Make a TRL trainer's model the bundle's policy (see engine.methods.common.adopt)."""
        from engine.methods.common import adopt

        adopt(self.bundle, trainer)

    def finish(self, train_summary: dict[str, Any], method: PolicyMethod) -> dict[str, Any]:
        """Save the policy (as `method` saves it), score the "after" side, write and return the summary."""
        import torch

        from engine.evaluate import relevance_summary, summarize

        cfg, ev = self.cfg, self.cfg.evaluation
        self.notify(Progress("save", message="saving the trained policy"))
        with self.timed("save"):
            ckpt = method.save_policy(self.bundle, self.out_dir / "policy")
        steps = int(train_summary.get("train_steps", cfg.total_steps))
        # absolute: an export or a continued run may read it from another working directory
        ckpt = Path(ckpt).resolve()
        self.store.delete_checkpoint(self.run_id, str(ckpt))  # a resumed run saved it before the after-eval failed
        self.store.add_checkpoint(self.run_id, steps, str(ckpt))

        # "split": which prompts the evaluation numbers come from (test: never used to choose settings)
        summary: dict[str, Any] = {"method": cfg.method, "holdout_prompts": len(self.holdout),
                                   "split": cfg.evaluation.split}
        if cfg.method in ("ppo", "rloo", "grpo"):
            summary["train_prompts"] = len(self.train_prompts)  # (dpo trains on pairs; dpo_ai reports ai_prompts)
        summary.update(train_summary)
        if self.init_source is not None:
            summary["init_from"] = cfg.model.init_from
            summary["init_from_policy"] = self.init_source.describe()
        if self.evaluator is not None and self.before is not None:
            tox_before, len_before, _ = self.before
            with self.timed("evaluate_after"):
                tox_after, len_after, kl_after = self.evaluate("after")
            summary.update(summarize(tox_before, tox_after, threshold=ev.toxic_threshold,
                                     bootstrap_samples=ev.bootstrap_samples, seed=ev.seed,
                                     samples_per_prompt=ev.samples_per_prompt))
            summary["evaluator"] = ev.evaluator.display_name
            summary["length_before"] = mean(len_before)
            summary["length_after"] = mean(len_after)
            summary["mean_kl"] = mean(kl_after)  # sequence KL to the base: comparable across methods
            rel_before, rel_after = self.relevance_scores.get("before", []), self.relevance_scores.get("after", [])
            if rel_before and len(rel_before) == len(rel_after):
                summary.update(relevance_summary(rel_before, rel_after, bootstrap_samples=ev.bootstrap_samples,
                                                 seed=ev.seed, samples_per_prompt=ev.samples_per_prompt))
            elif ev.relevance:
                summary["relevance_error"] = self.relevance_error or "the before side has no relevance scores"
        summary["wall_seconds"] = time.perf_counter() - self.t_start
        summary["phase_seconds"] = {k: round(v, 2) for k, v in self.phase_seconds.items()}
        if self.determinism:
            summary["deterministic"] = self.determinism["deterministic"]
            summary["threads"] = self.determinism["threads"]
        if torch.cuda.is_available():
            summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        summary["peak_rss_gb"] = peak_rss_gb()
        self.store.set_summary(self.run_id, summary)
        return summary


class PolicyMethod:
    """What a policy-training method says about itself; subclasses override `train` (and what else differs)."""

    causal_only = False  # True: refuse a seq2seq policy (TRL's trainers are causal-only) before weights load
    resumable = False  # True: it saves checkpoints and `train` continues from `run.resume`

    def seed(self, cfg: RunConfig) -> int:
        """The seed set before the policy loads (a LoRA adapter's initial weights depend on it)."""
        return 0

    def load(self, run: PolicyRun) -> None:
        """Load what training needs before the policy (e.g. reward backends). Default: nothing."""

    def train(self, run: PolicyRun) -> dict[str, Any]:
        """Train `run.bundle.policy` in place (from `run.resume` when set); return the training's part of the
        summary (with `train_steps`). Save checkpoints with `run.save_checkpoint`. Raise RunCancelled when
        cancelled."""
        raise NotImplementedError

    def read_checkpoint(self, path: Path) -> Any:
        """Load what `train` needs to continue from the checkpoint at `path`; raise if it is unreadable."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume")

    def save_policy(self, bundle, out_dir: Path) -> Path:
        """Write the final policy (full weights or LoRA adapter) + tokenizer; `from_pretrained` loads it."""
        out_dir.mkdir(parents=True, exist_ok=True)
        bundle.policy.lm.save_pretrained(out_dir)
        bundle.tokenizer.save_pretrained(out_dir)
        return out_dir

    def close(self) -> None:
        """Release what `load` opened (judge clients, thread pools). Default: nothing."""


def run_policy(method: PolicyMethod, cfg: RunConfig, store, run_id: str, notify: Notify,
               check_cancel: CancelCheck, resume: bool = False) -> dict[str, Any]:
    """A whole policy-training run with `method`; returns its summary. The runner records the run's status.

    resume: continue from the run's newest readable checkpoint (ValueError when it has none).
    With model.deterministic (the default) the run holds a fixed thread count and deterministic kernels, every RNG
    seeded with the method's seed, so a seed pins it (engine.determinism); the process is put back afterwards."""
    from engine.determinism import deterministic_run
    from engine.distributed import group_from_env, launched_world, local_device
    from engine.models import pick_device

    wanted = cfg.distributed.num_processes
    if wanted > 1 and launched_world() == 1:
        raise ConfigError([FieldError("distributed.num_processes", f"{wanted} processes, but this process was started "
                                      "alone: run it with `python -m engine run CONFIG` (which launches them) or "
                                      f"`accelerate launch --num_processes {wanted} -m engine run CONFIG`")])
    group = group_from_env()
    if group.distributed:  # each process on its own GPU (cuda:LOCAL_RANK); CPU processes stay on the CPU
        device = local_device(group, pick_device(cfg.model.device))
        if device != cfg.model.device:
            from dataclasses import replace

            cfg = replace(cfg, model=replace(cfg.model, device=device))
    with deterministic_run(method.seed(cfg), enabled=cfg.model.deterministic, threads=cfg.model.threads,
                           device=pick_device(cfg.model.device)) as det:
        run = PolicyRun(cfg, store, run_id, notify, check_cancel)
        run.group = group
        run.determinism = det
        return _run_policy(method, run, resume)


def _run_policy(method: PolicyMethod, run: PolicyRun, resume: bool) -> dict[str, Any]:
    cfg, notify = run.cfg, run.notify
    run.resuming = resume
    run.prepare()
    if method.causal_only:
        from engine.methods.common import require_causal

        require_causal(cfg)  # before any weights load
    from engine.models import pick_device

    run.device = pick_device(cfg.model.device)
    notify(Progress("load", message="loading the reward backends, the evaluator and the policy"))
    try:
        try:
            _load_and_evaluate_before(method, run, resume)
        except BaseException:
            if run.group.distributed:  # the others wait at the gate below: tell them no training follows
                run.group.any(True)
            raise
        if run.group.distributed and run.group.any(False):
            from engine.progress import RunCancelled

            if run.group.is_main:
                raise RuntimeError("another process of this run failed before training (its error is in the "
                                   "launch's output)")
            raise RunCancelled()  # rank 0 stopped (failed, cancelled) before training: this rank ends too
        with run.timed("train"):
            summary = method.train(run)
        if not run.group.is_main:  # rank 0 saves, evaluates and writes the summary
            return summary
        return run.finish(summary, method)
    finally:
        method.close()


def _load_and_evaluate_before(method: PolicyMethod, run: PolicyRun, resume: bool) -> None:
    """Load the method's pieces and the policy; then find the checkpoint to resume from (reading the stored "before"
    side) or evaluate the base model."""
    cfg, store, run_id, notify = run.cfg, run.store, run.run_id, run.notify
    with run.timed("load"):
        method.load(run)
        run.load(method.seed(cfg))
    if resume:
        run.resume = _find_resume(run, method)
        if run.resume is None:
            raise ValueError(f"run {run_id} has no readable checkpoint to resume from")
        store.truncate_after(run_id, run.resume.step)  # curves continue from the checkpoint's step
        store.set_progress(run_id, run.resume.step, cfg.total_steps)
        notify(Progress("load", message=f"resuming from the checkpoint after step {run.resume.step}"))
        if run.evaluator is not None:
            run.before = run.stored_before()
    else:
        store.set_progress(run_id, 0, cfg.total_steps)
        if run.evaluator is not None:
            with run.timed("evaluate_before"):
                run.before = run.evaluate("before")


def _find_resume(run: PolicyRun, method: PolicyMethod) -> Resume | None:
    """The checkpoint to resume from: rank 0 picks it (skipping damaged ones); every rank reads that one."""
    if not run.group.distributed:
        return run.find_resume(method.read_checkpoint)
    picked = run.find_resume(method.read_checkpoint) if run.group.is_main else None
    where = run.group.broadcast(None if picked is None else (picked.step, str(picked.path)))
    if where is None or run.group.is_main:
        return picked
    return Resume(where[0], Path(where[1]), method.read_checkpoint(Path(where[1])))
