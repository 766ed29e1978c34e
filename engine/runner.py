"""One run end to end: config → data → reward → policy → before-eval → PPO → checkpoint → after-eval.

Every number goes to the store as soon as it exists (metrics per step, samples, evaluations,
checkpoint, summary), so a crash loses nothing already computed and the UI can follow live. Bad
input fails before any model is loaded; a failing run is marked `failed` with its traceback, a
cancelled one `cancelled` (cancellation is checked between PPO steps).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig
from engine.store import Store

log = logging.getLogger(__name__)


class RunCancelled(Exception):
    """Raised inside a run when its cancellation was requested."""


@dataclass
class Progress:
    """What a progress listener is told: the phase, how far it is, and a one-line message."""

    phase: str  # data | load | eval_before | train | save | eval_after | done
    done: int = 0
    total: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Train and hold-out prompts (untruncated). Raises ConfigError on an empty or too small source."""
    from engine import data

    d = cfg.data
    try:
        prompts = data.load_prompts(data.resolve_source(d.source), template=d.template,
                                    min_chars=d.min_chars, max_chars=d.max_chars)
        holdout = d.holdout_size if cfg.evaluation.enabled else 0
        train, test = data.split(prompts, holdout_size=holdout, train_size=d.train_size, seed=d.split_seed)
    except (ValueError, OSError, RuntimeError, csv.Error) as exc:  # RuntimeError: the hub unreachable (offline)
        message = str(exc) if len(str(exc)) <= 300 else str(exc)[:299] + "…"
        raise ConfigError([FieldError("data.source", message)]) from exc
    if not train:
        raise ConfigError([FieldError("data.train_size", "no training prompts left after the hold-out split")])
    return train, test


def _batches(items: list[str], size: int, seed: int):
    """Endless batches over the prompts, reshuffled (seeded) every pass."""
    rng = random.Random(seed)
    pool: list[str] = []
    while True:
        while len(pool) < size:
            chunk = list(items)
            rng.shuffle(chunk)
            pool += chunk
        yield pool[:size]
        pool = pool[size:]


def _summary_lengths(lengths: list[int]) -> float:
    return float(sum(lengths) / len(lengths)) if lengths else math.nan


def execute(cfg: RunConfig, store: Store, run_id: str,
            on_progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Run `cfg` as store run `run_id` (which must exist); returns the summary. Marks the run's status."""
    notify = on_progress or (lambda p: None)
    try:
        store.set_status(run_id, "running")
        summary = _execute(cfg, store, run_id, notify)
    except RunCancelled:
        store.set_status(run_id, "cancelled", error="cancelled by the user")
        log.info("run %s cancelled", run_id)
        return {}
    except BaseException as exc:  # record every failure, then let it propagate
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        text = str(exc).strip()
        # A ConfigError's first line is only "invalid config:"; its field lines are the useful part.
        message = " ".join(line.strip() for line in text.splitlines()) if text else type(exc).__name__
        store.set_status(run_id, status, error=f"{type(exc).__name__}: {message}", traceback=traceback.format_exc())
        raise
    store.set_status(run_id, "completed")
    notify(Progress("done", 1, 1, "completed"))
    return summary


def _execute(cfg: RunConfig, store: Store, run_id: str, notify: Callable[[Progress], None]) -> dict[str, Any]:
    import torch

    from engine import data as data_mod
    from engine.evaluate import evaluate_side, summarize
    from engine.models import load_policy, save_policy
    from engine.ppo import PPOTrainer
    from engine.rewards import build_backend, build_reward

    def check_cancel() -> None:
        if store.is_cancel_requested(run_id):
            raise RunCancelled()

    if cfg.method != "ppo":  # DPO, reward model, RLOO, GRPO, AI-labelled DPO: TRL trainers (engine/methods)
        from engine.methods import execute_method

        return execute_method(cfg, store, run_id, notify, check_cancel)

    t_start = time.perf_counter()
    cfg.check()
    notify(Progress("data", message="loading prompts"))
    train, holdout = prepare_prompts(cfg)
    log.info("%d train prompts, %d hold-out prompts", len(train), len(holdout))

    notify(Progress("load", message="loading reward backends and policy"))
    from engine.models import pick_device

    device = pick_device(cfg.model.device)
    reward = build_reward(cfg.reward, device=device)
    evaluator = build_backend(cfg.evaluation.evaluator, device=device) if cfg.evaluation.enabled else None
    torch.manual_seed(cfg.ppo.seed)
    bundle = load_policy(cfg.model)
    check_cancel()

    max_tokens = cfg.data.max_prompt_tokens
    train = data_mod.truncate_left(train, bundle.tokenizer, max_tokens, template=cfg.data.template)
    holdout = data_mod.truncate_left(holdout, bundle.tokenizer, max_tokens, template=cfg.data.template)
    ev = cfg.evaluation

    def eval_side(which: str) -> tuple[list[float], list[int], list[float]]:
        def prog(done: int, total: int) -> None:
            notify(Progress(f"eval_{which}", done, total, f"evaluating {which}: {done}/{total} responses"))
            check_cancel()

        rows, tox, lengths, kls = evaluate_side(bundle, evaluator, holdout, cfg.generation, ev, which=which,
                                                max_prompt_tokens=max_tokens, progress=prog)
        store.add_evaluations(run_id, which, rows)
        return tox, lengths, kls

    if evaluator is not None:
        tox_before, len_before, _ = eval_side("before")

    # PPO, with the store as the metrics sink
    total = cfg.ppo.max_ppo_steps
    store.set_progress(run_id, 0, total)
    n_samples = cfg.ppo.samples_per_step

    def to_store(step: int, metrics: dict[str, float], rollout) -> None:
        metrics.update(reward.metrics())  # judge accounting (calls, tokens, latency, cost), cumulative
        store.log_metrics(run_id, step, metrics)
        if n_samples:
            rows = []
            for i in range(min(n_samples, len(rollout.prompts))):
                scores = {k: v[i] for k, v in rollout.raw_scores.items()}
                rows.append({"prompt": rollout.prompts[i], "response": rollout.responses[i],
                             "reward": float(rollout.scores[i]), "scores": scores})
            store.add_samples(run_id, step, rows)
        store.set_progress(run_id, step, total)

    def reward_fn(prompts, responses):
        result = reward.score(prompts, responses)
        return result.scores, result.raw

    trainer = PPOTrainer(bundle, reward_fn, cfg.ppo, cfg.generation, max_prompt_tokens=max_tokens,
                         callbacks=[to_store])
    # Each step's batch_size responses come from batch_size / num_generations prompts.
    batches = _batches(train, cfg.ppo.batch_size // cfg.ppo.num_generations, cfg.data.split_seed + cfg.ppo.seed)
    t_train = time.perf_counter()
    step_kls = []
    for step in range(1, total + 1):
        check_cancel()
        metrics = trainer.step(next(batches))
        step_kls.append(metrics["objective/kl"])
        notify(Progress("train", step, total, f"step {step}/{total}", metrics))
    train_s = time.perf_counter() - t_train

    notify(Progress("save", message="saving the trained policy"))
    ckpt = save_policy(bundle, Path(cfg.output_dir) / run_id / "policy")
    store.add_checkpoint(run_id, total, str(ckpt))

    summary: dict[str, Any] = {"train_prompts": len(train), "holdout_prompts": len(holdout),
                               "train_seconds": train_s, "train_mean_kl": sum(step_kls) / len(step_kls),
                               "train_final_kl": step_kls[-1]}
    if evaluator is not None:
        tox_after, len_after, kl_after = eval_side("after")
        summary.update(summarize(tox_before, tox_after, threshold=ev.toxic_threshold,
                                 bootstrap_samples=ev.bootstrap_samples, seed=ev.seed,
                                 samples_per_prompt=ev.samples_per_prompt))
        summary["evaluator"] = cfg.evaluation.evaluator.display_name
        summary["length_before"] = _summary_lengths(len_before)
        summary["length_after"] = _summary_lengths(len_after)
        summary["mean_kl"] = float(sum(kl_after) / len(kl_after)) if kl_after else math.nan
    summary["wall_seconds"] = time.perf_counter() - t_start
    if torch.cuda.is_available():
        summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    summary["peak_rss_gb"] = _peak_rss_gb()
    store.set_summary(run_id, summary)
    return summary


def _peak_rss_gb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def run(cfg: RunConfig, store: Store | None = None,
        on_progress: Callable[[Progress], None] | None = None) -> tuple[str, dict[str, Any]]:
    """Validate, register and execute a run; returns (run_id, summary). The Python entry point."""
    cfg.check()
    prepare_prompts(cfg)  # a bad data source fails here, before the run is registered (cheap: text only)
    store = store or Store()
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, method=cfg.method, total_steps=cfg.total_steps)
    summary = execute(cfg, store, run_id, on_progress)
    return run_id, summary
