"""Method "reward_model" (RLHF's first stage) with TRL's RewardTrainer, and the PPO run that follows it.

Responsible for: training a one-logit sequence classifier on the HH preference pairs (Bradley-Terry loss),
saving it as a plain Hugging Face directory the `hf_classifier` reward backend loads (num_labels 1, label 0 =
"reward"), and measuring its pairwise accuracy on held-out pairs THROUGH that backend — so the number reported is
the one PPO will see. Pairs are tokenized here exactly as the backend tokenizes `prompt + reply` (its
`score_on: prompt_response`: the tokenizer's special tokens, cut from the left to reward_model.max_length), and
handed to TRL pre-tokenized, so training and scoring see the same tokens (TRL would otherwise append an EOS that
the backend never adds). `ppo_config` builds the PPO run rewarded by a trained reward model (reward_model.then_ppo:
the worker queues it when the reward-model run completes); `engine.runner.rlhf_chain` runs both stages in one
process.

Not responsible for: the PPO run (engine.runner) or loading the classifier for scoring (engine.rewards).
The reward model is always fully fine-tuned (model.lora applies to policies only): its directory must be a plain
classifier; pick a small `reward_model.base_model` for a large policy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.config import RewardBackendSettings, RunConfig
from engine.methods.common import PREFIX, quiet, replace, split_pairs, trl_args, usable_pairs

REWARD_LABEL = "reward"


def load_reward_model(path: str, dtype: str = "float32"):
    """(model, tokenizer): a one-logit AutoModelForSequenceClassification on `path` (a new head if it has none),
    padding with EOS when the tokenizer has no pad token (as the hf_classifier backend does)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.truncation_side = "left"  # long dialogues keep their end, the reply being scored
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, id2label={0: REWARD_LABEL}, label2id={REWARD_LABEL: 0},
        dtype="auto" if dtype == "auto" else getattr(torch, dtype))
    model.config.pad_token_id = tokenizer.pad_token_id  # decoder classifiers pool the last non-pad token
    return model, tokenizer


def tokenize_pairs(pairs: Sequence[dict], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    """chosen_ids / rejected_ids of prompt + reply, tokenized as HFClassifierBackend tokenizes them."""
    prompts = [p["prompt"] for p in pairs]

    def ids(replies: list[str]) -> list[list[int]]:
        texts = [p + r for p, r in zip(prompts, replies, strict=True)]
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    chosen, rejected = ids([p["chosen"] for p in pairs]), ids([p["rejected"] for p in pairs])
    return [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(chosen, rejected, strict=True)]


def backend_settings(model_dir: str | Path, max_length: int, name: str = "reward_model") -> RewardBackendSettings:
    """The `hf_classifier` reward backend that scores with a trained reward model (reward = its only logit).

    score_on prompt_response: the model was trained on prompt + reply; pairwise training makes the shared prompt's
    contribution cancel, so it rates the reply in its context (seed trap 2 concerns single-text classifiers).
    """
    return RewardBackendSettings(kind="hf_classifier", name=name, score_on="prompt_response",
                                 options={"model": str(model_dir), "label": 0, "max_length": max_length})


def pairwise_accuracy(backend, pairs: Sequence[dict]) -> tuple[float, list[float], list[float]]:
    """Share of pairs where the backend scores prompt + chosen above prompt + rejected; and both score lists."""
    prompts = [p["prompt"] for p in pairs]
    chosen = backend.score(prompts, [p["chosen"] for p in pairs]).scores
    rejected = backend.score(prompts, [p["rejected"] for p in pairs]).scores
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    return (sum(wins) / len(wins) if wins else math.nan), chosen, rejected


def train_reward_model(cfg: RunConfig, train_pairs: Sequence[dict], eval_pairs: Sequence[dict], out_dir: Path,
                       callbacks: Sequence[Any] = ()) -> tuple[Any, dict[str, Any]]:
    """Train and save a reward model to out_dir / "reward_model"; returns (trainer, summary of the training)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from engine.models import resolve_model_path

    r = cfg.reward_model
    base = resolve_model_path(r.base_model or cfg.model.name_or_path)
    model, tokenizer = load_reward_model(base, cfg.model.dtype)
    args = RewardConfig(**trl_args(cfg, out_dir / "trl", learning_rate=r.learning_rate, max_steps=r.max_steps,
                                   batch_size=r.batch_size, gradient_accumulation_steps=r.gradient_accumulation_steps,
                                   max_grad_norm=r.max_grad_norm, seed=r.seed,
                                   activation_checkpointing=r.activation_checkpointing,
                                   checkpoints=False),  # a reward model run is short and restarts whole
                        max_length=r.max_length)
    train_ds = Dataset.from_list(tokenize_pairs(train_pairs, tokenizer, r.max_length))
    eval_ds = Dataset.from_list(tokenize_pairs(eval_pairs, tokenizer, r.max_length)) if eval_pairs else None
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, callbacks=list(callbacks))
    quiet(trainer)
    summary: dict[str, Any] = {"base_model": base, "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs)}
    if eval_ds is not None:  # the untrained head's accuracy (about chance), logged at step 0 as rm/eval/accuracy
        summary["trl_eval_accuracy_before"] = float(trainer.evaluate()["eval_accuracy"])
    trainer.train()
    summary["train_steps"] = trainer.state.global_step
    if trainer.state.global_step < r.max_steps:
        return trainer, summary  # stopped early (cancelled): nothing to evaluate or save
    if eval_ds is not None:
        summary["trl_eval_accuracy"] = float(trainer.evaluate()["eval_accuracy"])  # logged as rm/eval/accuracy
    model_dir = out_dir / "reward_model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(model_dir)
    summary["model_path"] = str(model_dir)
    return trainer, summary


def run_reward_model(cfg: RunConfig, store, run_id: str, notify: Callable, check_cancel: Callable) -> dict[str, Any]:
    """A whole "reward_model" run: pairs, training, save, held-out pairwise accuracy through hf_classifier."""
    import time

    import torch

    from engine.methods.callbacks import StoreCallback
    from engine.methods.dpo import human_pairs
    from engine.methods.lifecycle import kept_out_prompts, peak_rss_gb
    from engine.models import pick_device
    from engine.progress import Progress
    from engine.rewards import build_backend

    t_start = time.perf_counter()
    cfg.check()
    r = cfg.reward_model
    notify(Progress("data", message="loading preference pairs"))
    pairs, dropped = human_pairs(cfg, kept_out_prompts(cfg))  # pairs from validation or test dialogues dropped
    cap = usable_pairs(r.max_pairs, r.max_steps, r.batch_size, r.gradient_accumulation_steps)
    train_pairs, eval_pairs = split_pairs(pairs, r.eval_pairs, cap, cfg.data.split_seed)
    torch.manual_seed(r.seed)
    store.set_progress(run_id, 0, r.max_steps)
    check_cancel()
    notify(Progress("train", 0, r.max_steps, f"reward model on {len(train_pairs)} human preference pairs"))
    out_dir = Path(cfg.output_dir) / run_id
    callback = StoreCallback(store, run_id, PREFIX["reward_model"], total_steps=r.max_steps, notify=notify)
    trainer, summary = train_reward_model(cfg, train_pairs, eval_pairs, out_dir, [callback])
    callback.raise_if_stopped()
    store.add_checkpoint(run_id, summary["train_steps"], summary["model_path"])

    # The headline number, measured the way PPO will use the model: through the hf_classifier backend.
    notify(Progress("eval_after", 0, len(eval_pairs), "pairwise accuracy on held-out pairs", unit="pair"))
    settings = backend_settings(summary["model_path"], r.max_length)
    backend = build_backend(settings, device=pick_device(cfg.model.device))
    accuracy, chosen, rejected = pairwise_accuracy(backend, eval_pairs)
    rows = []
    for i, pair in enumerate(eval_pairs[:8]):  # a few scored held-out pairs for the runs table
        rows.append({"idx": 2 * i, "prompt": pair["prompt"], "response": pair["chosen"], "reward": chosen[i],
                     "scores": {"chosen": 1.0, "margin": chosen[i] - rejected[i]}})
        rows.append({"idx": 2 * i + 1, "prompt": pair["prompt"], "response": pair["rejected"], "reward": rejected[i],
                     "scores": {"chosen": 0.0, "margin": chosen[i] - rejected[i]}})
    store.add_samples(run_id, summary["train_steps"], rows)
    store.log_metrics(run_id, summary["train_steps"], {"rm/eval/pairwise_accuracy": accuracy})
    summary.update(method="reward_model", pairwise_accuracy=accuracy, pairs_dropped_as_holdout=dropped,
                   mean_margin=float(sum(c - x for c, x in zip(chosen, rejected, strict=True)) / max(len(chosen), 1)),
                   train_seconds=callback.final.get("train_runtime"), reward_backend=dataclasses.asdict(settings),
                   wall_seconds=time.perf_counter() - t_start, peak_rss_gb=peak_rss_gb())
    if torch.cuda.is_available():
        summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    del trainer
    store.set_summary(run_id, summary)
    return summary


def ppo_config(cfg: RunConfig, rm_summary: dict[str, Any], rm_run_id: str | None = None,
               keep_rewards: bool | None = None) -> RunConfig:
    """RLHF's second stage: the PPO run that follows a reward-model run (the worker, the CLI and rlhf_chain use it).

    A copy of `cfg` (cfg itself is not changed) with method "ppo", name "<cfg.name>-ppo" and parent_run = rm_run_id,
    rewarded by the model of `rm_summary` (a completed reward_model run's summary: its `reward_backend`) alone, or
    added to cfg.reward's backends with keep_rewards (None: cfg.reward_model.keep_rewards). Every other section
    (model, data, evaluation, ppo, generation, reward normalisation) is cfg's.
    """
    if not (rm_summary or {}).get("reward_backend"):
        raise ValueError("the reward-model run's summary has no reward_backend: did it complete?")
    keep = cfg.reward_model.keep_rewards if keep_rewards is None else keep_rewards
    rm_backend = RewardBackendSettings(**rm_summary["reward_backend"])
    out = replace(cfg, method="ppo", name=f"{cfg.name}-ppo", parent_run=rm_run_id)  # sections deep-copied
    out.reward = dataclasses.replace(out.reward, backends=(list(out.reward.backends) if keep else []) + [rm_backend])
    return out
