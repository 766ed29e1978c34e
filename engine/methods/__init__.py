"""Every training method, one module each, sharing the engine's config, store, data and evaluation. PPO is the lab's
own (engine/ppo.py: TRL 1.x has no PPO trainer); the methods RLAIF is compared with run on TRL 1.16's trainers.

| method         | trainer           | data                                      | module               |
| -------------- | ----------------- | ----------------------------------------- | -------------------- |
| `ppo`          | engine.ppo        | the prompts, rewards = cfg.reward         | ppo.py               |
| `dpo`          | DPOTrainer        | human HH preference pairs                 | dpo.py               |
| `reward_model` | RewardTrainer     | human HH preference pairs                 | reward_model.py      |
| `rloo`, `grpo` | RLOO/GRPOTrainer  | the PPO prompts, rewards = cfg.reward     | online.py            |
| `dpo_ai`       | DPOTrainer        | pairs labelled by cfg.reward (RLAIF)      | ai_preferences.py    |

Every policy method (all but `reward_model`) runs inside one lifecycle (lifecycle.py) and is evaluated the same
way: the same hold-out prompts (`lifecycle.prepare_prompts`), the same evaluator, "before" = the base model,
"after" = the trained policy, plus the sequence KL to the base. DPO, RLOO and GRPO are causal-only in TRL 1.x; a
seq2seq policy is refused with a ConfigError on `model.architecture`. `engine.runner.rlhf_chain(cfg)` trains a
reward model and then runs PPO with it; a `reward_model` run with `reward_model.then_ppo` queued on the worker (the Launch page) queues that PPO run itself
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
