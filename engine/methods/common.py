"""What every TRL-based method shares: the run skeleton around training, TRL arguments, and preference-pair data.

Responsible for:
- `PolicyRun`: the steps a policy-training method shares with PPO's runner — validate, load the hold-out prompts
  (`engine.runner.prepare_prompts`, so the SAME prompts as PPO), load the evaluator and the policy, score the
  "before" responses (the base model), then, after the method's training, save the policy, score the "after"
  responses (with the sequence KL to the base, as PPO's evaluation does) and write the summary;
- `trl_args`: the TRL/transformers `TrainingArguments` every method sets the same way (CPU needs bf16=False and
  use_cpu=True; logging every step; no checkpoints or trackers of TRL's own: the store is the sink);
- preference pairs: the hold-out guard (no pair whose dialogue is a hold-out prompt), a seeded split, token
  truncation, and the chat-message form of HH prompts for models with a chat template.

Not responsible for: any training loop (TRL's trainers), metrics keys (callbacks.py), or run status (the runner).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig, causal_only_message

# Namespace of each method's TRL metric keys in the store (see engine/methods/__init__.py for the list).
PREFIX = {"dpo": "dpo/", "dpo_ai": "dpo/", "reward_model": "rm/", "rloo": "rloo/", "grpo": "grpo/"}


# ------------------------------------------------------------------------------------------------ TRL arguments
def trl_args(cfg: RunConfig, out_dir: str | Path, *, learning_rate: float, max_steps: int, batch_size: int,
             gradient_accumulation_steps: int = 1, max_grad_norm: float = 1.0, seed: int = 0,
             activation_checkpointing: bool = True) -> dict[str, Any]:
    """Keyword arguments shared by every TRL config (DPOConfig, RewardConfig, RLOOConfig, GRPOConfig)."""
    from engine.models import pick_device

    device = pick_device(cfg.model.device)
    return dict(
        output_dir=str(out_dir), learning_rate=learning_rate, max_steps=max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm, seed=seed,
        logging_steps=1,  # every optimizer step reaches the store, as PPO's do
        save_strategy="no", report_to="none", disable_tqdm=True,  # the store and the runner's progress are the sinks
        use_cpu=device == "cpu",
        # TRL's default (True) fails on CPU; on a GPU, bf16 weights or bf16 mixed precision turn it on
        bf16=device.startswith("cuda") and (cfg.model.dtype == "bfloat16" or cfg.model.mixed_precision == "bf16"),
        # Set by its new name: in transformers 5 `gradient_checkpointing` is a deprecated alias (TRL's default: on).
        activation_checkpointing=activation_checkpointing,
        dataloader_num_workers=0,
    )


def quiet(trainer) -> None:
    """Drop the callbacks that print every log dict or draw a progress bar (the store and the runner do that)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def unwrap(trainer):
    """The trained model itself (accelerate may have wrapped it)."""
    return trainer.accelerator.unwrap_model(trainer.model)


def adopt(bundle, trainer) -> None:
    """Make the trainer's model `bundle`'s policy: TRL trained it in place, but DPO adds a "ref" copy of a LoRA
    policy's adapter, which is dropped (the lab's reference is the base with adapters off, as for PPO)."""
    model = unwrap(trainer)
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and "ref" in peft_config:
        model.set_adapter("default")
        model.delete_adapter("ref")
    bundle.policy.lm = model


# ------------------------------------------------------------------------------------------------ model checks
def require_causal(cfg: RunConfig) -> str:
    """The resolved model path; ConfigError naming model.architecture when the policy is seq2seq."""
    from engine.models import is_seq2seq, resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path)
    if is_seq2seq(path, cfg.model.architecture):
        raise ConfigError([FieldError("model.architecture", causal_only_message(cfg.method))])
    return path


# ------------------------------------------------------------------------------------------------ pairs
def split_pairs(pairs: Sequence[dict], eval_pairs: int, max_pairs: int | None, seed: int,
                what: str = "preference pairs") -> tuple[list[dict], list[dict]]:
    """Seeded (train, eval) split of preference pairs; the eval part is drawn first, so max_pairs never changes it."""
    from engine import data

    n_eval = min(eval_pairs, max(len(pairs) - 1, 0))
    train_n = None if max_pairs is None else min(max_pairs, len(pairs) - n_eval)
    return data.split(list(pairs), holdout_size=n_eval, train_size=train_n, seed=seed, kind=what)


def usable_pairs(max_pairs: int | None, max_steps: int, batch_size: int, gradient_accumulation_steps: int) -> int:
    """How many training pairs to prepare: max_pairs, but never more than max_steps can consume (one epoch over
    every process), so a short run does not tokenize thousands of pairs it will never see."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))  # accelerate / torchrun set it; each process takes a batch
    needed = max_steps * batch_size * gradient_accumulation_steps * world
    return needed if max_pairs is None else min(max_pairs, needed)


def drop_holdout_pairs(pairs: Sequence[dict], holdout_prompts: Sequence[str], template: str) -> tuple[list[dict], int]:
    """Pairs whose chosen dialogue is not one of the hold-out prompts, and how many were dropped.

    The hold-out prompts are HH `chosen` dialogues put in the template; a pair whose prompt + chosen makes one of
    them would leak the evaluation prompts into training.
    """
    from engine.data import format_prompt

    held = set(holdout_prompts)
    kept = [p for p in pairs if format_prompt(p["prompt"] + p["chosen"], template) not in held]
    return kept, len(pairs) - len(kept)


def truncate_right(texts: Sequence[str], tokenizer, max_tokens: int) -> list[str]:
    """Cut each text to its first `max_tokens` tokens (texts already within budget are returned unchanged)."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True))
    return out


_TURN = re.compile(r"\n\nHuman:|\n\nAssistant:")


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """An HH prompt ("\\n\\nHuman: ... \\n\\nAssistant:") as chat messages; text before the first marker (a prompt
    cut from the left) is kept as a user turn. The empty final Assistant turn is left for the model."""
    messages: list[dict[str, str]] = []
    role, pos = "user", 0
    for match in _TURN.finditer(prompt):
        text = prompt[pos:match.start()].strip()
        if text:
            if messages and messages[-1]["role"] == role:
                messages[-1]["content"] += "\n\n" + text
            else:
                messages.append({"role": role, "content": text})
        role = "user" if match.group() == "\n\nHuman:" else "assistant"
        pos = match.end()
    tail = prompt[pos:].strip()
    if tail:
        messages.append({"role": role, "content": tail})
    return messages or [{"role": "user", "content": prompt.strip()}]


def preference_rows(pairs: Sequence[dict], chat: bool, hh_prompts: bool) -> list[dict]:
    """Pairs in TRL's preference format: plain strings, or chat messages when the model uses its chat template.

    hh_prompts: the prompts are HH dialogues (split into turns) rather than one user message (a lab prompt).
    """
    if not chat:
        return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    rows = []
    for p in pairs:
        prompt = hh_messages(p["prompt"]) if hh_prompts else [{"role": "user", "content": p["prompt"]}]
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": p["chosen"].strip()}],
                     "rejected": [{"role": "assistant", "content": p["rejected"].strip()}]})
    return rows


def peak_rss_gb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


# ------------------------------------------------------------------------------------------------ the run skeleton
class PolicyRun:
    """The shared skeleton of a policy-training run (dpo, dpo_ai, rloo, grpo) around the method's training.

    `start()` validates, loads prompts / evaluator / policy and scores the "before" side; the method then trains
    `self.bundle.policy.lm` (in place: TRL trains the object it is given) and calls `finish(train_summary)`, which
    saves the policy, scores the "after" side and writes the summary. Every number reaches the store as it is made.
    """

    def __init__(self, cfg: RunConfig, store, run_id: str, notify: Callable[[Any], None],
                 check_cancel: Callable[[], None]) -> None:
        self.cfg, self.store, self.run_id = cfg, store, run_id
        self.notify, self.check_cancel = notify, check_cancel
        self.t_start = time.perf_counter()
        self.bundle = None
        self.evaluator = None
        self.train_prompts: list[str] = []
        self.holdout: list[str] = []
        self.raw_holdout: list[str] = []  # untruncated, to match against HH dialogues
        self.before: tuple[list[float], list[int]] | None = None
        self.out_dir = Path(cfg.output_dir) / run_id

    def start(self) -> "PolicyRun":
        import torch

        from engine import data as data_mod
        from engine.models import load_policy, pick_device
        from engine.rewards import build_backend
        from engine.runner import Progress, prepare_prompts

        cfg = self.cfg
        cfg.check()
        self.notify(Progress("data", message="loading prompts"))
        train, holdout = prepare_prompts(cfg)
        require_causal(cfg)  # before any weights load
        self.notify(Progress("load", message="loading the evaluator and the policy"))
        device = pick_device(cfg.model.device)
        if cfg.evaluation.enabled:
            self.evaluator = build_backend(cfg.evaluation.evaluator, device=device)
        torch.manual_seed(self.seed)
        self.bundle = load_policy(cfg.model)
        self.check_cancel()
        tok, budget, template = self.bundle.tokenizer, cfg.data.max_prompt_tokens, cfg.data.template
        self.raw_holdout = holdout
        self.train_prompts = data_mod.truncate_left(train, tok, budget, template=template)
        self.holdout = data_mod.truncate_left(holdout, tok, budget, template=template)
        self.store.set_progress(self.run_id, 0, cfg.total_steps)
        if self.evaluator is not None:
            self.before = self.evaluate("before")
        return self

    @property
    def seed(self) -> int:
        c = self.cfg
        return c.online.seed if c.method in ("rloo", "grpo") else c.dpo.seed

    def evaluate(self, which: str) -> tuple[list[float], list[int], list[float]]:
        """Responses to the hold-out prompts ("before": the base model; "after": the trained policy), scored by the
        evaluator and stored; returns (toxicity, lengths, KL to the base per response)."""
        from engine.evaluate import evaluate_side
        from engine.runner import Progress

        def prog(done: int, total: int) -> None:
            self.notify(Progress(f"eval_{which}", done, total, f"evaluating {which}: {done}/{total} responses"))
            self.check_cancel()

        rows, tox, lengths, kls = evaluate_side(self.bundle, self.evaluator, self.holdout, self.cfg.generation,
                                                self.cfg.evaluation, which=which,
                                                max_prompt_tokens=self.cfg.data.max_prompt_tokens, progress=prog)
        self.store.add_evaluations(self.run_id, which, rows)
        return tox, lengths, kls

    def adopt(self, trainer) -> None:
        """Make the trainer's model the bundle's policy (see `adopt`)."""
        adopt(self.bundle, trainer)

    def finish(self, train_summary: dict[str, Any]) -> dict[str, Any]:
        """Save the policy, score the "after" side, write and return the summary."""
        import torch

        from engine.evaluate import summarize
        from engine.runner import Progress

        cfg, ev = self.cfg, self.cfg.evaluation
        self.notify(Progress("save", message="saving the trained policy"))
        ckpt = self.out_dir / "policy"
        ckpt.mkdir(parents=True, exist_ok=True)
        self.bundle.policy.lm.save_pretrained(ckpt)  # a LoRA policy saves its adapter, as PPO's save_policy does
        self.bundle.tokenizer.save_pretrained(ckpt)
        steps = int(train_summary.get("train_steps", cfg.total_steps))
        self.store.add_checkpoint(self.run_id, steps, str(ckpt))

        summary: dict[str, Any] = {"method": cfg.method, "holdout_prompts": len(self.holdout)}
        if cfg.method in ("rloo", "grpo"):
            summary["train_prompts"] = len(self.train_prompts)  # (dpo trains on pairs; dpo_ai reports ai_prompts)
        summary.update(train_summary)
        if self.evaluator is not None and self.before is not None:
            tox_before, len_before, _ = self.before
            tox_after, len_after, kl_after = self.evaluate("after")
            summary.update(summarize(tox_before, tox_after, threshold=ev.toxic_threshold,
                                     bootstrap_samples=ev.bootstrap_samples, seed=ev.seed,
                                     samples_per_prompt=ev.samples_per_prompt))
            summary["evaluator"] = ev.evaluator.display_name
            summary["length_before"] = _mean(len_before)
            summary["length_after"] = _mean(len_after)
            summary["mean_kl"] = _mean(kl_after)  # sequence KL to the base: comparable with PPO's
        summary["wall_seconds"] = time.perf_counter() - self.t_start
        if torch.cuda.is_available():
            summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        summary["peak_rss_gb"] = peak_rss_gb()
        self.store.set_summary(self.run_id, summary)
        return summary


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def replace(cfg: RunConfig, **changes) -> RunConfig:
    """A copy of cfg with top-level fields changed (sections are deep-copied so the original stays untouched)."""
    return dataclasses.replace(RunConfig.from_dict(cfg.to_dict()), **changes)
