"""Method "ppo": the lab's own PPO (engine/ppo.py) on the run's prompts, rewarded by the run's reward mix.

Responsible for: feeding PPOTrainer endless seeded batches of prompts, writing each step's metrics (with the judge
accounting) and a few samples to the store, and the training's part of the summary (KL along training).

Not responsible for: the algorithm (engine/ppo.py, which knows no store), or the rest of the run (prompts,
evaluation, saving, summary: engine.methods.lifecycle).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from engine.config import RunConfig
from engine.methods.lifecycle import PolicyMethod, PolicyRun
from engine.progress import Progress


class PromptBatches:
    """Endless batches over the prompts, reshuffled (seeded) every pass."""

    def __init__(self, items: list[str], size: int, seed: int) -> None:
        self.items, self.size = list(items), size
        self.rng = random.Random(seed)
        self.pool: list[str] = []

    def __iter__(self) -> "PromptBatches":
        return self

    def __next__(self) -> list[str]:
        while len(self.pool) < self.size:
            chunk = list(self.items)
            self.rng.shuffle(chunk)
            self.pool += chunk
        batch, self.pool = self.pool[:self.size], self.pool[self.size:]
        return batch


class PPO(PolicyMethod):
    """PPO with a value head; the reward mix is loaded before the policy (as the seed did)."""

    def __init__(self) -> None:
        self.reward = None

    def seed(self, cfg: RunConfig) -> int:
        return cfg.ppo.seed

    def load(self, run: PolicyRun) -> None:
        from engine.rewards import build_reward

        self.reward = build_reward(run.cfg.reward, device=run.device)

    def save_policy(self, bundle, out_dir: Path) -> Path:
        from engine.models import save_policy

        return save_policy(bundle, out_dir)  # with the value head

    def train(self, run: PolicyRun) -> dict[str, Any]:
        from engine.ppo import PPOTrainer

        cfg, store, run_id, reward = run.cfg, run.store, run.run_id, self.reward
        total = cfg.ppo.max_ppo_steps
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

        trainer = PPOTrainer(run.bundle, reward_fn, cfg.ppo, cfg.generation,
                             max_prompt_tokens=cfg.data.max_prompt_tokens, callbacks=[to_store])
        # Each step's batch_size responses come from batch_size / num_generations prompts.
        batches = PromptBatches(run.train_prompts, cfg.ppo.batch_size // cfg.ppo.num_generations,
                                cfg.data.split_seed + cfg.ppo.seed)
        t_train = time.perf_counter()
        step_kls = []
        for step in range(1, total + 1):
            run.check_cancel()
            metrics = trainer.step(next(batches))
            step_kls.append(metrics["objective/kl"])
            run.notify(Progress("train", step, total, f"step {step}/{total}", metrics))
        return {"train_steps": total, "train_seconds": time.perf_counter() - t_train,
                "train_mean_kl": sum(step_kls) / len(step_kls), "train_final_kl": step_kls[-1]}
