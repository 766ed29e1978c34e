"""Methods "rloo" and "grpo": online RL with TRL's RLOOTrainer / GRPOTrainer and the lab's reward backends.

Responsible for: wrapping each member of the run's reward mix (`engine.rewards.build_reward`) as a TRL reward
function `fn(prompts, completions, **kw) -> list[float]` (async, so TRL scores all members concurrently, as the
Ensemble does), with `reward_weights` = the members' weights and the mix's normalisation applied per member, so
TRL's weighted sum is exactly the Ensemble's score; recording the batch's raw signals and a few samples for the
store the way PPO does; and the method `Online` (the rest of the run: engine.methods.lifecycle, as for PPO).

Not responsible for: the RL algorithms (TRL), the backends (engine.rewards), the store keys (callbacks.py).
TRL's online trainers are causal-only: a seq2seq policy is refused before any weights load.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from engine.config import RunConfig
from engine.methods.common import PREFIX, quiet, read_trl_checkpoint, trl_args
from engine.methods.lifecycle import PolicyMethod, PolicyRun
from engine.progress import Progress

# TRL key → the lab's key for the same number (PPO's names where the quantity is the same; see __init__.py).
METRIC_MAP = {
    "reward": "env/reward_mean",
    "reward_std": "env/reward_std",
    "completions/mean_length": "env/response_length_mean",
    "kl": "objective/kl_per_token",
    "entropy": "objective/entropy_per_token",
    "step_time": "time/step_s",
}


def _text(item: Any) -> str:
    """A completion or prompt as text: TRL passes strings, or chat messages for conversational data."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and item and isinstance(item[-1], dict):
        return str(item[-1].get("content", ""))
    raise ValueError(f"expected a string or a list of chat messages, got {type(item).__name__}")


def normalise(ensemble, name: str, values: list[float], valid: list[bool] | None = None) -> list[float]:
    """The Ensemble's normalisation of one member's scores (running z-score from valid scores only, declared
    min-max, or none)."""
    return ensemble.normalise(name, values, valid)


class BatchRecorder:
    """The latest scored batch, per member: prompts, responses, raw result and normalised scores (thread-safe)."""

    def __init__(self, ensemble) -> None:
        self.ensemble = ensemble
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[list[str], list[str], Any, list[float]]] = {}
        self.batches = 0  # completed batches (every member scored)

    def record(self, name: str, prompts: list[str], responses: list[str], result, normed: list[float]) -> None:
        with self._lock:
            self._latest[name] = (prompts, responses, result, normed)
            if len(self._latest) == len(self.ensemble.names) and all(
                    v[1] is responses or v[1] == responses for v in self._latest.values()):
                self.batches += 1

    def signals(self) -> dict[str, list[float]]:
        """Raw signals of the latest batch, keyed as the Ensemble keys them ("<member>", "<member>/<signal>")."""
        with self._lock:
            latest = dict(self._latest)
        out: dict[str, list[float]] = {}
        for name in self.ensemble.names:
            if name not in latest:
                continue
            _, _, result, normed = latest[name]
            out[name] = [float(v) for v in result.scores]
            for key, vals in result.raw.items():
                out[key if key.startswith(name + "/") else f"{name}/{key}"] = [float(v) for v in vals]
            if self.ensemble.normalize != "none":
                out[f"{name}/normalized"] = normed
        return out

    def rows(self, n: int) -> list[dict[str, Any]]:
        """Up to n samples of the latest batch: prompt, response, the weighted reward TRL used, every signal."""
        with self._lock:
            latest = dict(self._latest)
        if n <= 0 or len(latest) < len(self.ensemble.names):
            return []
        first = latest[self.ensemble.names[0]]
        signals = self.signals()
        rows = []
        for i in range(min(n, len(first[0]))):
            members = zip(self.ensemble.names, self.ensemble.weights, strict=True)
            total = sum(w * latest[name][3][i] for name, w in members)
            rows.append({"prompt": first[0][i], "response": first[1][i], "reward": float(total),
                         "scores": {k: v[i] for k, v in signals.items()}})
        return rows


class MemberReward:
    """One reward backend of the mix as a TRL reward function (async: TRL awaits all members together)."""

    def __init__(self, ensemble, index: int, recorder: BatchRecorder) -> None:
        self.ensemble, self.index, self.recorder = ensemble, index, recorder
        self.__name__ = ensemble.names[index]  # TRL logs rewards/<__name__>/mean

    async def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                       raw_prompt: Sequence[str] | None = None, **kwargs) -> list[float]:
        texts = [_text(c) for c in completions]
        # The lab's prompt text (the dataset's raw_prompt column), not the chat-formatted one TRL generated from.
        prompt_texts = list(raw_prompt) if raw_prompt is not None else [_text(p) for p in prompts]
        member = self.ensemble.members[self.index]
        result = await asyncio.to_thread(member.score, prompt_texts, texts)
        values = [float(v) for v in result.scores]
        if len(values) != len(texts):
            raise ValueError(f"reward backend {self.__name__!r} returned {len(values)} scores for {len(texts)} texts")
        normed = normalise(self.ensemble, self.__name__, values, result.valid)
        self.recorder.record(self.__name__, prompt_texts, texts, result, normed)
        return normed


def reward_functions(ensemble) -> tuple[list[MemberReward], list[float], BatchRecorder]:
    """(TRL reward functions, reward_weights, the recorder they write to) for an Ensemble."""
    recorder = BatchRecorder(ensemble)
    funcs = [MemberReward(ensemble, i, recorder) for i in range(len(ensemble.names))]
    return funcs, list(ensemble.weights), recorder


def build_trainer(method: str, bundle, prompts: Sequence[str], ensemble, cfg: RunConfig, out_dir,
                  callbacks: Sequence[Any] = ()):
    """A GRPOTrainer or RLOOTrainer on `bundle.policy.lm` (trained in place) over `prompts`; returns
    (trainer, recorder). The reference is rebuilt by TRL from the policy's saved path (bundle.path), or is the
    base with adapters off for a LoRA policy."""
    from datasets import Dataset

    o, g = cfg.online, cfg.generation
    funcs, weights, recorder = reward_functions(ensemble)
    common = dict(
        **trl_args(cfg, out_dir, learning_rate=o.learning_rate, max_steps=o.max_steps, batch_size=o.batch_size,
                   gradient_accumulation_steps=o.gradient_accumulation_steps, max_grad_norm=o.max_grad_norm,
                   seed=o.seed, activation_checkpointing=o.activation_checkpointing),
        num_generations=o.num_generations, max_completion_length=g.max_new_tokens, temperature=g.temperature,
        top_p=g.top_p, top_k=g.top_k, generation_kwargs={"min_new_tokens": min(g.min_length, g.max_new_tokens)},
        beta=o.beta, num_iterations=o.num_iterations, epsilon=o.epsilon, reward_weights=weights,
    )
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(**common, loss_type=o.grpo_loss_type, scale_rewards=o.scale_rewards)
        trainer_cls = GRPOTrainer
    elif method == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(**common, normalize_advantages=o.normalize_advantages)
        trainer_cls = RLOOTrainer
    else:
        raise ValueError(f"method must be 'rloo' or 'grpo', got {method!r}")
    if bundle.chat_template:  # the same user turn PPO's encode_queries builds
        rows = [{"prompt": [{"role": "user", "content": p}], "raw_prompt": p} for p in prompts]
    else:
        rows = [{"prompt": p, "raw_prompt": p} for p in prompts]
    trainer = trainer_cls(model=bundle.policy.lm, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=bundle.tokenizer, callbacks=list(callbacks))
    quiet(trainer)
    return trainer, recorder


class Online(PolicyMethod):
    """RLOO or GRPO (cfg.method) with TRL's trainers, rewarded by the run's reward mix (loaded before the policy)."""

    causal_only = True
    resumable = True  # from the Trainer's checkpoints (a z-scored reward mix restarts its running statistics)

    def __init__(self) -> None:
        self.ensemble = None

    def seed(self, cfg: RunConfig) -> int:
        return cfg.online.seed

    def read_checkpoint(self, path):
        return read_trl_checkpoint(path)

    def load(self, run: PolicyRun) -> None:
        from engine.rewards import build_reward

        self.ensemble = build_reward(run.cfg.reward, device=run.device)

    def close(self) -> None:
        if self.ensemble is not None:
            self.ensemble.close()

    def train(self, run: PolicyRun) -> dict[str, Any]:
        import math

        from engine.methods.callbacks import StoreCallback

        cfg, store, run_id, ensemble = run.cfg, run.store, run.run_id, self.ensemble
        method, o = cfg.method, cfg.online
        recorder = None

        def extra() -> dict[str, float]:
            out = {f"env/reward/{k}": _finite_mean(v) for k, v in recorder.signals().items()}
            out["objective/kl_coef"] = o.beta
            out.update(ensemble.metrics())  # judge accounting (calls, tokens, latency, cost), cumulative
            return out

        written = {"batches": 0}

        def samples(step: int) -> None:
            if o.samples_per_step and recorder.batches > written["batches"]:
                written["batches"] = recorder.batches
                store.add_samples(run_id, step, recorder.rows(o.samples_per_step))

        callback = StoreCallback(store, run_id, PREFIX[method], total_steps=o.max_steps, mapping=METRIC_MAP,
                                 notify=run.notify, extra_metrics=extra, on_step=samples,
                                 on_checkpoint=run.record_checkpoint)
        trainer, recorder = build_trainer(method, run.bundle, run.train_prompts, ensemble, cfg, run.out_dir / "trl",
                                          [callback])
        run.notify(Progress("train", 0, o.max_steps, f"{method.upper()} on {len(run.train_prompts)} prompts"))
        trainer.train(resume_from_checkpoint=str(run.resume.path) if run.resume else None)
        callback.raise_if_stopped()
        run.adopt(trainer)
        rewards = store.metrics_wide(run_id, ["env/reward_mean"])["env/reward_mean"].dropna()
        return {"train_steps": trainer.state.global_step, "train_seconds": callback.final.get("train_runtime"),
                "train_reward_first": float(rewards.iloc[0]) if len(rewards) else math.nan,
                "train_reward_last": float(rewards.iloc[-1]) if len(rewards) else math.nan}


def _finite_mean(values: Sequence[float]) -> float:
    import math

    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
