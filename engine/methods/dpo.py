"""Method "dpo": Direct Preference Optimization with TRL's DPOTrainer on the human HH preference pairs.

Responsible for: turning preference pairs into TRL's format (prompt cut from the left to data.max_prompt_tokens,
replies cut to dpo.max_response_tokens, chat messages when the policy uses its chat template), running DPOTrainer
on the lab's policy (full weights against a frozen copy, or LoRA against the base with adapters off), and TRL's
held-out pair evaluation. `DPO` is the method (the rest of the run, with the same hold-out prompts, evaluator and
before/after toxicity as PPO, is engine.methods.lifecycle's); `train_dpo` is reused by "dpo_ai" on AI-labelled pairs.

Not responsible for: where pairs come from (engine.data / ai_preferences.py) or the store keys (callbacks.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.config import RunConfig
from engine.methods.common import (
    PREFIX,
    drop_holdout_pairs,
    preference_rows,
    quiet,
    read_trl_checkpoint,
    split_pairs,
    trl_args,
    truncate_right,
    usable_pairs,
)
from engine.methods.lifecycle import PolicyMethod, PolicyRun
from engine.progress import Progress


def fit_pairs(pairs: Sequence[dict], tokenizer, max_prompt_tokens: int, max_response_tokens: int) -> list[dict]:
    """Pairs cut to the token budgets: prompts from the left (the newest turns survive), replies from the right."""
    from engine.data import truncate_left

    prompts = truncate_left([p["prompt"] for p in pairs], tokenizer, max_prompt_tokens, template=None)
    chosen = truncate_right([p["chosen"] for p in pairs], tokenizer, max_response_tokens)
    rejected = truncate_right([p["rejected"] for p in pairs], tokenizer, max_response_tokens)
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected, strict=True)]


def train_dpo(bundle, train_pairs: Sequence[dict], eval_pairs: Sequence[dict], cfg: RunConfig, out_dir,
              callbacks: Sequence[Any] = (), hh_prompts: bool = True, resume_from=None,
              checkpoints: bool = True, tokens_seen: int = 0) -> tuple[Any, dict[str, Any]]:
    """Train `bundle.policy.lm` with DPO on the pairs (in place); returns (trainer, summary of the training).

    The pairs must already fit the token budgets (`fit_pairs`). The reference is the bundle's frozen copy, or for
    a LoRA policy the base with adapters off. hh_prompts: prompts are HH dialogues (else one user message each).
    resume_from: a Trainer checkpoint to continue from, and tokens_seen its `num_tokens` (TRL's running count is
    not in its checkpoints); checkpoints: save them (every checkpoint.every_steps).
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    d = cfg.dpo
    if not train_pairs:
        raise ValueError("train_pairs: DPO needs at least one preference pair")
    args = DPOConfig(**trl_args(cfg, out_dir, learning_rate=d.learning_rate, max_steps=d.max_steps,
                                batch_size=d.batch_size, gradient_accumulation_steps=d.gradient_accumulation_steps,
                                max_grad_norm=d.max_grad_norm, seed=d.seed,
                                activation_checkpointing=d.activation_checkpointing, checkpoints=checkpoints),
                     beta=d.beta, loss_type=[d.loss_type], label_smoothing=d.label_smoothing,
                     max_length=None)  # already cut to the budgets: TRL's truncation would cut replies off
    chat = bundle.chat_template
    train_ds = Dataset.from_list(preference_rows(train_pairs, chat, hh_prompts))
    eval_ds = Dataset.from_list(preference_rows(eval_pairs, chat, hh_prompts)) if eval_pairs else None
    trainer = DPOTrainer(model=bundle.policy.lm, ref_model=bundle.reference, args=args, train_dataset=train_ds,
                         eval_dataset=eval_ds, processing_class=bundle.tokenizer, callbacks=list(callbacks))
    quiet(trainer)
    if resume_from and hasattr(trainer, "_total_train_tokens"):  # so the num_tokens curve continues, not restarts
        trainer._total_train_tokens = tokens_seen
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    summary: dict[str, Any] = {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                               "train_steps": trainer.state.global_step}
    if eval_ds is not None and trainer.state.global_step >= d.max_steps:  # not after a cancelled run
        # TRL's implicit-reward metrics on pairs it never trained on; logged to the store as dpo/eval/*
        metrics = trainer.evaluate()
        summary["pair_eval"] = {k[len("eval_"):]: float(v) for k, v in metrics.items()
                                if k.startswith("eval_") and isinstance(v, (int, float))}
    return trainer, summary


def human_pairs(cfg: RunConfig, raw_holdout: Sequence[str]) -> tuple[list[dict], int]:
    """The HH preference pairs of cfg.data.source, without those whose dialogue is one of `raw_holdout` (pass
    every kept-out prompt: validation and test, `lifecycle.kept_out_prompts`)."""
    from engine.config import ConfigError, FieldError
    from engine.data import load_preference_pairs

    try:
        pairs = load_preference_pairs(cfg.data.source)
    except (ValueError, FileNotFoundError) as exc:  # e.g. a prompt-only file: no chosen/rejected dialogues
        raise ConfigError([FieldError("data.source", f"{cfg.method} needs preference pairs: {exc}")]) from exc
    return drop_holdout_pairs(pairs, raw_holdout, cfg.data.template)


class DPO(PolicyMethod):
    """DPO on the human HH pairs of cfg.data.source (those whose dialogue is a hold-out prompt dropped)."""

    causal_only = True
    resumable = True  # from the Trainer's checkpoints

    def seed(self, cfg: RunConfig) -> int:
        return cfg.dpo.seed

    def read_checkpoint(self, path):
        return read_trl_checkpoint(path)

    def train(self, run: PolicyRun) -> dict[str, Any]:
        from engine.methods.callbacks import StoreCallback

        cfg = run.cfg
        pairs, dropped = human_pairs(cfg, run.raw_kept_out)
        d = cfg.dpo
        cap = usable_pairs(d.max_pairs, d.max_steps, d.batch_size, d.gradient_accumulation_steps)
        train_pairs, eval_pairs = split_pairs(pairs, d.eval_pairs, cap, cfg.data.split_seed)
        tok = run.bundle.tokenizer
        budget, reply = cfg.data.max_prompt_tokens, cfg.dpo.max_response_tokens
        train_pairs, eval_pairs = fit_pairs(train_pairs, tok, budget, reply), fit_pairs(eval_pairs, tok, budget, reply)
        run.notify(Progress("train", 0, d.max_steps, f"DPO on {len(train_pairs)} human preference pairs"))
        callback = StoreCallback(run.store, run.run_id, PREFIX["dpo"], total_steps=d.max_steps, notify=run.notify,
                                 on_checkpoint=run.record_checkpoint)
        tokens = 0
        if run.resume:
            seen = run.store.metrics(run.run_id, [PREFIX["dpo"] + "num_tokens"])
            tokens = int(seen["value"].iloc[-1]) if len(seen) else 0
        trainer, summary = train_dpo(run.bundle, train_pairs, eval_pairs, cfg, run.out_dir / "trl", [callback],
                                     resume_from=run.resume and run.resume.path, tokens_seen=tokens)
        callback.raise_if_stopped()
        run.adopt(trainer)
        summary.update(pairs_dropped_as_holdout=dropped, train_seconds=callback.final.get("train_runtime"))
        return summary
