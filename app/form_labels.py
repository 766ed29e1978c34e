"""What the Launch form calls each config field, and the help a practitioner reads: what the setting does and when
to change it. Fields not listed here fall back to their config name and the comment beside them in engine/config.py.
"""

from __future__ import annotations

# dotted path -> (label, help)
LABELS: dict[str, tuple[str, str]] = {
    # run
    "output_dir": ("Output folder", "Checkpoints and the trained policy go to <this folder>/<run id>/."),
    # model details
    "model.architecture": ("Architecture", "auto reads the model's config; set causal or seq2seq only when that fails."),
    "model.dtype": ("Weight precision", "float32 for training on a CPU; bfloat16 halves the memory on a GPU."),
    "model.mixed_precision": ("Mixed precision", "bf16: about 2x faster steps where the chip has bf16 units (recent "
                              "CPUs with AVX512-BF16/AMX, GPUs); choose none on a CPU without them."),
    "model.device": ("Device", "auto uses a GPU when there is one, else the CPU."),
    "model.chat_template": ("Chat template", "Wrap the prompt as a user turn of the model's chat template. auto: for "
                            "chat models whose tokenizer has one."),
    "model.init_from": ("Start from a trained policy", "Continue training: run:<run id> (its final policy), "
                        "run:<run id>@<step> (a checkpoint) or a model / adapter directory. Empty: start from the "
                        "model above, which stays the KL reference either way."),
    "model.lora.enabled": ("Train LoRA adapters", "Train small adapter matrices instead of every weight: less memory, "
                           "usually wants a ~10x larger learning rate."),
    "model.lora.r": ("LoRA rank", "Size of each adapter; 8–16 is usual. Larger: more capacity, more memory."),
    "model.lora.alpha": ("LoRA alpha", "Adapter scaling (alpha / rank); keep about 2x the rank."),
    "model.lora.dropout": ("LoRA dropout", "Must stay 0: the policy runs with dropout off."),
    # PPO
    "ppo.learning_rate": ("Learning rate", "Step size of the optimizer. Too high: the policy drifts and KL explodes; "
                          "too low: nothing changes. 5e-5 moved SmolLM2 in 28 steps; 1.41e-5 barely did."),
    "ppo.focus": ("Focus on hard prompts", "Share of each step's prompts drawn from the training prompts the base "
                  "model does worst on by this run's reward (rated once before training: 2 responses per prompt, "
                  "which with an LLM judge costs those calls). 0: every prompt alike."),
    "ppo.focus_fraction": ("Hard-prompt fraction", "How many of the training prompts count as hard: this fraction, "
                           "those rated lowest."),
    "ppo.max_ppo_steps": ("Training steps", "PPO steps (one rollout batch each). Duration grows linearly with it."),
    "ppo.ppo_epochs": ("Epochs per batch", "Optimisation passes over each rollout batch. More: more update per "
                       "generation, less on-policy."),
    "ppo.batch_size": ("Responses per step", "Responses generated and learned from each step. Larger: steadier "
                       "updates, longer steps."),
    "ppo.mini_batch_size": ("Responses per gradient step", "Must divide responses per step. Smaller: more updates "
                            "per step and less memory."),
    "ppo.num_generations": ("Responses per prompt", "Several responses to one prompt share a leave-one-out "
                            "baseline; must divide responses per step. 1: one response per prompt."),
    "ppo.init_kl_coef": ("KL coefficient", "How strongly the policy is held near the starting model (per-token KL "
                         "penalty). Raise it when responses degrade into gibberish; lower it when nothing moves."),
    "ppo.adaptive_kl": ("Adapt the KL coefficient", "Adjust the coefficient toward a target KL (Ziegler et al.). "
                        "Useful for long runs; a short run does better with a fixed one."),
    "ppo.kl_target": ("Target KL", "KL (nats per response) the adaptive controller steers toward."),
    "ppo.kl_horizon": ("KL controller horizon", "Responses over which the adaptive controller reacts; about one "
                       "step's batch for short runs."),
    "ppo.gamma": ("Discount γ", "Discount of future rewards within a response; 1 because the reward comes at the end."),
    "ppo.lam": ("GAE λ (bias–variance of advantages)", "1: unbiased, noisy advantages; lower: smoother, more reliant "
                "on the value head. 0.95 is the usual choice."),
    "ppo.cliprange": ("Policy clip range", "How far one update may move a token's probability ratio (PPO's ε)."),
    "ppo.cliprange_value": ("Value clip range", "How far one update may move the value head's predictions."),
    "ppo.vf_coef": ("Value-loss weight", "Weight of the value head's loss in the total loss."),
    "ppo.whiten_rewards": ("Normalise rewards per batch", "Divide per-token rewards by their spread (mean kept). "
                           "Try it when rewards are on a very large or small scale."),
    "ppo.max_grad_norm": ("Gradient clipping", "Largest gradient norm per update; 0 turns clipping off."),
    "ppo.seed": ("Random seed", "Seeds sampling and initialisation; change it to see how much a result varies."),
    "ppo.samples_per_step": ("Samples shown per step", "Prompt/response rows stored each step for the Live table."),
    # generation
    "generation.min_length": ("Minimum new tokens", "Each response is at least this long."),
    "generation.max_new_tokens": ("Maximum new tokens", "Longest response. Step time grows with it; 24 is enough "
                                  "for a response to turn toxic."),
    "generation.top_k": ("Top-k", "Sample only from the k likeliest tokens; 0 turns it off."),
    "generation.top_p": ("Top-p (nucleus)", "Sample from the smallest set of tokens holding this probability; 1 "
                         "turns it off."),
    "generation.do_sample": ("Sample", "Off: greedy decoding (PPO needs sampling to explore)."),
    "generation.temperature": ("Temperature", "Above 1: more varied responses; below 1: more predictable."),
    # data
    "data.min_chars": ("Shortest dialogue (characters)", "Dialogues shorter than this are skipped."),
    "data.max_chars": ("Longest dialogue (characters)", "Dialogues longer than this are skipped."),
    "data.train_size": ("Training prompts", "Empty: every prompt not held out."),
    "data.holdout_size": ("Hold-out prompts", "Prompts kept out of training to measure toxicity before and after. "
                          "Below 200 the interval of the change is wide."),
    "data.validation_size": ("Validation prompts", "Prompts kept out of training to choose settings on (set "
                             "Evaluate on: validation while tuning); the test prompts stay untouched. 0: none "
                             "(small data sources)."),
    "data.max_prompt_tokens": ("Prompt length (tokens)", "Longer prompts are cut from the left (the newest turns "
                               "stay). Shorter: faster steps."),
    "data.split_seed": ("Split seed", "Which prompts are held out; keep it fixed to compare runs on the same hold-out."),
    # evaluation
    "evaluation.enabled": ("Evaluate before and after", "Score the hold-out before and after training (the Before / "
                           "after page). Off: training only."),
    "evaluation.batch_size": ("Evaluation batch", "Responses generated and scored together: memory vs speed."),
    "evaluation.samples_per_prompt": ("Responses per hold-out prompt", "More: a tighter interval, proportionally "
                                      "longer evaluation."),
    "evaluation.toxic_threshold": ("Toxic above", "The toxic rate is the share of responses scored above this."),
    "evaluation.bootstrap_samples": ("Bootstrap resamples", "For the 95 % interval of the change in mean toxicity."),
    "evaluation.seed": ("Evaluation seed", "Sampling seed of the evaluation; the same before and after."),
    # resources
    "resources.gpus": ("GPUs", "GPUs the run needs. Empty: one device (a GPU where there is one, else the CPU). A "
                       "Ray cluster reserves them on one node; a run asking for more than a node (or, with local "
                       "workers, this machine) has is refused before it is queued."),
    "resources.cpus": ("CPU cores (Ray)", "Cores a Ray node reserves for the run. Local workers use the cores the "
                       "model's thread setting says."),
    "resources.memory_gb": ("Memory, GiB (Ray)", "Memory a Ray node reserves for the run; 0: no reservation."),
    # checkpoints
    "checkpoint.every_steps": ("Checkpoint every (steps)", "A crash loses at most this many steps; 0: no periodic "
                               "checkpoints."),
    "checkpoint.keep": ("Checkpoints kept", "Newest checkpoints kept on disk; 2 leaves one if the newest is damaged."),
}
for _section in ("dpo", "reward_model", "online"):
    LABELS[f"{_section}.learning_rate"] = ("Learning rate", "Step size of the optimizer; too high and the policy "
                                           "drifts, too low and nothing changes.")
    LABELS[f"{_section}.max_steps"] = ("Training steps", "Optimizer steps; duration grows linearly with it.")


def label_and_help(path: str, fallback_help: str | None) -> tuple[str, str | None]:
    """The label and help of a field: LABELS, else its config name and the config's comment."""
    if path in LABELS:
        return LABELS[path]
    return path.split(".")[-1].replace("_", " "), fallback_help
