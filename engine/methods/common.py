"""What every TRL-based method shares: TRL arguments, model checks, and preference-pair data.

Responsible for:
- `trl_args`: the TRL/transformers `TrainingArguments` every method sets the same way (CPU needs bf16=False and
  use_cpu=True; logging every step; the Trainer's own checkpoints every checkpoint.every_steps; no trackers: the
  store is the sink); `read_trl_checkpoint`: a Trainer checkpoint a run resumes from;
- preference pairs: the hold-out guard (no pair whose dialogue is a hold-out prompt), a seeded split, token
  truncation, and the chat-message form of HH prompts for models with a chat template.

Not responsible for: the run around training (lifecycle.py), any training loop (TRL's trainers), metrics keys
(callbacks.py), or run status (the runner).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.config import ConfigError, FieldError, RunConfig, causal_only_message

# Namespace of each method's TRL metric keys in the store (see engine/methods/__init__.py for the list).
PREFIX = {"dpo": "dpo/", "dpo_ai": "dpo/", "reward_model": "rm/", "rloo": "rloo/", "grpo": "grpo/"}


# ------------------------------------------------------------------------------------------------ TRL arguments
def trl_args(cfg: RunConfig, out_dir: str | Path, *, learning_rate: float, max_steps: int, batch_size: int,
             gradient_accumulation_steps: int = 1, max_grad_norm: float = 1.0, seed: int = 0,
             activation_checkpointing: bool = True, checkpoints: bool = True) -> dict[str, Any]:
    """Keyword arguments shared by every TRL config (DPOConfig, RewardConfig, RLOOConfig, GRPOConfig).

    checkpoints: the Trainer saves `checkpoint-N` directories under out_dir every checkpoint.every_steps steps,
    keeping checkpoint.keep (a run resumes from them); False: none.
    """
    from engine.models import pick_device

    device = pick_device(cfg.model.device)
    every = cfg.checkpoint.every_steps if checkpoints else 0
    saving = dict(save_strategy="steps", save_steps=every, save_total_limit=cfg.checkpoint.keep) if every else \
        dict(save_strategy="no")
    return dict(**saving,
        output_dir=str(out_dir), learning_rate=learning_rate, max_steps=max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm, seed=seed,
        logging_steps=1,  # every optimizer step reaches the store, as PPO's do
        report_to="none", disable_tqdm=True,  # the store and the runner's progress are the sinks
        use_cpu=device == "cpu",
        # TRL's default (True) fails on CPU; on a GPU, bf16 weights or bf16 mixed precision turn it on
        bf16=device.startswith("cuda") and (cfg.model.dtype == "bfloat16" or cfg.model.mixed_precision == "bf16"),
        # Set by its new name: in transformers 5 `gradient_checkpointing` is a deprecated alias (TRL's default: on).
        activation_checkpointing=activation_checkpointing,
        dataloader_num_workers=0,
    )


def read_trl_checkpoint(path: Path) -> Path:
    """`path` when it holds a complete Trainer checkpoint (its trainer_state.json parses); raises otherwise. The
    Trainer itself loads it (`train(resume_from_checkpoint=path)`): weights or adapter, optimizer, scheduler, RNG
    states and the data order."""
    import json

    from engine.checkpoint import TRL_STATE_FILE

    state = json.loads((Path(path) / TRL_STATE_FILE).read_text())
    if not isinstance(state, dict) or "global_step" not in state:
        raise ValueError(f"{path / TRL_STATE_FILE} has no global_step")
    return Path(path)


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


def replace(cfg: RunConfig, **changes) -> RunConfig:
    """A copy of cfg with top-level fields changed (sections are deep-copied so the original stays untouched)."""
    return dataclasses.replace(RunConfig.from_dict(cfg.to_dict()), **changes)
