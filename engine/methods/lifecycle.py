"""The one lifecycle of a policy-training run, written once for every method (ppo, dpo, dpo_ai, rloo, grpo).

    prompts -> load (method's own pieces, evaluator, policy) -> before-evaluation -> train -> save
            -> after-evaluation -> summary

A method says only how it trains: a `PolicyMethod` subclass with `train(run)` (and, optionally, `load(run)` for
what it needs before the policy loads, `save_policy` for what its final checkpoint holds, `close()`).
`run_policy(method, ...)` does the rest. Every number reaches the store as soon as it exists.

Also here, because every method needs them: `prepare_prompts` (the train / hold-out split, the same for all
methods) and `peak_rss_gb`.

Not responsible for: run status (engine.runner records it), any training loop (the method modules), or which
method runs (the runner dispatches).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig
from engine.progress import CancelCheck, Notify, Progress


def prepare_prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Train and hold-out prompts (untruncated). Raises ConfigError on an empty or too small source."""
    from engine import data

    d = cfg.data
    try:
        prompts = data.load_prompts(data.resolve_source(d.source), template=d.template,
                                    min_chars=d.min_chars, max_chars=d.max_chars)
        holdout = d.holdout_size if cfg.evaluation.enabled else 0
        train, test = data.split(prompts, holdout_size=holdout, train_size=d.train_size, seed=d.split_seed)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError([FieldError("data.source", str(exc))]) from exc
    if not train:
        raise ConfigError([FieldError("data.train_size", "no training prompts left after the hold-out split")])
    return train, test


def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def mean(values: Sequence[float]) -> float:
    """The mean, or NaN for no values."""
    return float(sum(values) / len(values)) if values else math.nan


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
        self.before: tuple[list[float], list[int], list[float]] | None = None
        self.out_dir = Path(cfg.output_dir) / run_id

    # ---- the steps, in order -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Validate the config and split the prompts (text only: bad input fails before any model loads)."""
        self.cfg.check()
        self.notify(Progress("data", message="loading prompts"))
        self.raw_train, self.raw_holdout = prepare_prompts(self.cfg)

    def load(self, seed: int) -> None:
        """Load the evaluator and the policy (seeded), and cut the prompts to the token budget."""
        import torch

        from engine import data as data_mod
        from engine.models import load_policy
        from engine.rewards import build_backend

        cfg = self.cfg
        if cfg.evaluation.enabled:
            self.evaluator = build_backend(cfg.evaluation.evaluator, device=self.device)
        torch.manual_seed(seed)
        self.bundle = load_policy(cfg.model)
        self.check_cancel()
        tok, budget, template = self.bundle.tokenizer, cfg.data.max_prompt_tokens, cfg.data.template
        self.train_prompts = data_mod.truncate_left(self.raw_train, tok, budget, template=template)
        self.holdout = data_mod.truncate_left(self.raw_holdout, tok, budget, template=template)

    def evaluate(self, which: str) -> tuple[list[float], list[int], list[float]]:
        """Responses to the hold-out prompts ("before": the base model; "after": the trained policy), scored by the
        evaluator and stored; returns (toxicity, lengths, KL to the base per response)."""
        from engine.evaluate import evaluate_side

        def prog(done: int, total: int) -> None:
            self.notify(Progress(f"eval_{which}", done, total, f"evaluating {which}: {done}/{total} responses"))
            self.check_cancel()

        rows, tox, lengths, kls = evaluate_side(self.bundle, self.evaluator, self.holdout, self.cfg.generation,
                                                self.cfg.evaluation, which=which,
                                                max_prompt_tokens=self.cfg.data.max_prompt_tokens, progress=prog)
        self.store.add_evaluations(self.run_id, which, rows)
        return tox, lengths, kls

    def adopt(self, trainer) -> None:
        """Make a TRL trainer's model the bundle's policy (see engine.methods.common.adopt)."""
        from engine.methods.common import adopt

        adopt(self.bundle, trainer)

    def finish(self, train_summary: dict[str, Any], method: "PolicyMethod | None" = None) -> dict[str, Any]:
        """Save the policy, score the "after" side, write and return the summary."""
        import torch

        from engine.evaluate import summarize

        cfg, ev = self.cfg, self.cfg.evaluation
        self.notify(Progress("save", message="saving the trained policy"))
        ckpt = (method or PolicyMethod()).save_policy(self.bundle, self.out_dir / "policy")
        steps = int(train_summary.get("train_steps", cfg.total_steps))
        self.store.add_checkpoint(self.run_id, steps, str(ckpt))

        summary: dict[str, Any] = {"method": cfg.method, "holdout_prompts": len(self.holdout)}
        if cfg.method in ("ppo", "rloo", "grpo"):
            summary["train_prompts"] = len(self.train_prompts)  # (dpo trains on pairs; dpo_ai reports ai_prompts)
        summary.update(train_summary)
        if self.evaluator is not None and self.before is not None:
            tox_before, len_before, _ = self.before
            tox_after, len_after, kl_after = self.evaluate("after")
            summary.update(summarize(tox_before, tox_after, threshold=ev.toxic_threshold,
                                     bootstrap_samples=ev.bootstrap_samples, seed=ev.seed,
                                     samples_per_prompt=ev.samples_per_prompt))
            summary["evaluator"] = ev.evaluator.display_name
            summary["length_before"] = mean(len_before)
            summary["length_after"] = mean(len_after)
            summary["mean_kl"] = mean(kl_after)  # sequence KL to the base: comparable across methods
        summary["wall_seconds"] = time.perf_counter() - self.t_start
        if torch.cuda.is_available():
            summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        summary["peak_rss_gb"] = peak_rss_gb()
        self.store.set_summary(self.run_id, summary)
        return summary


class PolicyMethod:
    """What a policy-training method says about itself; subclasses override `train` (and what else differs)."""

    causal_only = False  # True: refuse a seq2seq policy (TRL's trainers are causal-only) before weights load

    def seed(self, cfg: RunConfig) -> int:
        """The seed set before the policy loads (a LoRA adapter's initial weights depend on it)."""
        return 0

    def load(self, run: PolicyRun) -> None:
        """Load what training needs before the policy (e.g. reward backends). Default: nothing."""

    def train(self, run: PolicyRun) -> dict[str, Any]:
        """Train `run.bundle.policy` in place; return the training's part of the summary (with `train_steps`).
        Raise engine.progress.RunCancelled when cancelled."""
        raise NotImplementedError

    def save_policy(self, bundle, out_dir: Path) -> Path:
        """Write the final policy (full weights or LoRA adapter) + tokenizer; `from_pretrained` loads it."""
        out_dir.mkdir(parents=True, exist_ok=True)
        bundle.policy.lm.save_pretrained(out_dir)
        bundle.tokenizer.save_pretrained(out_dir)
        return out_dir

    def close(self) -> None:
        """Release what `load` opened (judge clients, thread pools). Default: nothing."""


def run_policy(method: PolicyMethod, cfg: RunConfig, store, run_id: str, notify: Notify,
               check_cancel: CancelCheck) -> dict[str, Any]:
    """A whole policy-training run with `method`; returns its summary. The runner records the run's status."""
    run = PolicyRun(cfg, store, run_id, notify, check_cancel)
    run.prepare()
    if method.causal_only:
        from engine.methods.common import require_causal

        require_causal(cfg)  # before any weights load
    from engine.models import pick_device

    run.device = pick_device(cfg.model.device)
    notify(Progress("load", message="loading the reward backends, the evaluator and the policy"))
    try:
        method.load(run)
        run.load(method.seed(cfg))
        store.set_progress(run_id, 0, cfg.total_steps)
        if run.evaluator is not None:
            run.before = run.evaluate("before")
        summary = method.train(run)
        return run.finish(summary, method)
    finally:
        method.close()
