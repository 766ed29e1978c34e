"""The methods RLAIF is compared with, on TRL 1.16's maintained trainers, sharing the engine's config, store, data
and evaluation. PPO stays in engine/ppo.py + engine/runner.py (TRL 1.x has no PPO trainer).

| method         | trainer           | data                                      | module               |
| -------------- | ----------------- | ----------------------------------------- | -------------------- |
| `dpo`          | DPOTrainer        | human HH preference pairs                 | dpo.py               |
| `reward_model` | RewardTrainer     | human HH preference pairs                 | reward_model.py      |
| `rloo`, `grpo` | RLOO/GRPOTrainer  | the PPO prompts, rewards = cfg.reward     | online.py            |
| `dpo_ai`       | DPOTrainer        | pairs labelled by cfg.reward (RLAIF)      | ai_preferences.py    |

Every policy method (all but `reward_model`) is evaluated exactly as PPO is: the same hold-out prompts
(`engine.runner.prepare_prompts`), the same evaluator, "before" = the base model, "after" = the trained policy,
plus the sequence KL to the base. DPO, RLOO and GRPO are causal-only in TRL 1.x; a seq2seq policy is refused with a
ConfigError on `model.architecture`. `rlhf_chain(cfg)` trains a reward model and then runs PPO with it; a
`reward_model` run with `reward_model.then_ppo` queued on the worker (the Launch page) queues that PPO run itself
when it completes (`reward_model.ppo_config` builds it, for both).

Logged metrics (written every optimizer step by callbacks.StoreCallback):

- `<prefix><trl key>`: every number TRL logs, under the method's prefix `dpo/` (dpo, dpo_ai), `rm/`, `rloo/` or
  `grpo/`; `<prefix>eval/<trl key>`: TRL's evaluation on held-out pairs (dpo, dpo_ai, reward_model).
- `dpo/rewards/chosen`, `dpo/rewards/rejected`: mean implicit reward beta * (log pi - log pi_ref) of the chosen /
  rejected reply; `dpo/rewards/margins`: their mean difference; `dpo/rewards/accuracies`: share of pairs where it
  is > 0; `dpo/loss`; `dpo/logps/chosen`, `dpo/logps/rejected`: summed log-probs of the replies under the policy.
- `rm/loss` (Bradley-Terry), `rm/accuracy` (share of pairs with r(chosen) > r(rejected)), `rm/margin` (mean
  r(chosen) - r(rejected)), `rm/min_reward`, `rm/mean_reward`, `rm/max_reward`; `rm/eval/pairwise_accuracy`: the
  held-out accuracy measured through the hf_classifier backend (logged once, after training).
- rloo / grpo, under the lab's names (PPO's where the quantity is the same): `env/reward_mean`, `env/reward_std`
  (TRL's `reward`, `reward_std`: the weighted reward of the batch); `env/reward/<signal>` (each backend's raw
  signal, as PPO's); `env/response_length_mean` (`completions/mean_length`); `objective/kl_per_token` (TRL's `kl`,
  the mean per-token KL to the reference: NOT PPO's `objective/kl`, which sums over the response; the summary's
  `mean_kl` is the per-sequence KL for every method); `objective/entropy_per_token` (`entropy`);
  `objective/kl_coef` (the fixed `online.beta`); `time/step_s` (`step_time`).

Importing this package is cheap; torch, transformers and trl load when a method runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.config import METHODS, RunConfig

TRL_METHODS = tuple(m for m in METHODS if m != "ppo")

__all__ = ["TRL_METHODS", "execute_method", "rlhf_chain"]


def execute_method(cfg: RunConfig, store, run_id: str, notify: Callable[[Any], None],
                   check_cancel: Callable[[], None]) -> dict[str, Any]:
    """Run a non-PPO method as store run `run_id`; returns its summary. Called by engine.runner, which records the
    run's status (raise engine.runner.RunCancelled to mark it cancelled)."""
    if cfg.method == "dpo":
        from engine.methods.dpo import run_dpo

        return run_dpo(cfg, store, run_id, notify, check_cancel)
    if cfg.method == "reward_model":
        from engine.methods.reward_model import run_reward_model

        return run_reward_model(cfg, store, run_id, notify, check_cancel)
    if cfg.method in ("rloo", "grpo"):
        from engine.methods.online import run_online

        return run_online(cfg, store, run_id, notify, check_cancel)
    if cfg.method == "dpo_ai":
        from engine.methods.ai_preferences import run_dpo_ai

        return run_dpo_ai(cfg, store, run_id, notify, check_cancel)
    raise ValueError(f"method must be one of {', '.join(TRL_METHODS)} here (ppo runs in engine.runner); "
                     f"got {cfg.method!r}")


def rlhf_chain(cfg: RunConfig, store=None, on_progress=None, keep_rewards: bool | None = None,
               on_run: Callable[[str, RunConfig], None] | None = None) -> tuple[str, str]:
    """Train a reward model, then run PPO with it as the reward; returns (reward-model run id, PPO run id)."""
    from engine.methods.reward_model import rlhf_chain as chain

    return chain(cfg, store, on_progress, keep_rewards=keep_rewards, on_run=on_run)
