"""PPO step time at float32 vs bf16 autocast (`model.mixed_precision`), and what bf16 does to the log-probs.

Usage: python bench/bench_precision.py [--model builtin:smollm2] [--steps 3] [--batch 16] [--threads N] [--smoke]

Both precisions start from the same weights, see the same HH prompts (the default config's: "Summarize the following
conversation." cut to 96 tokens, chat template on) and the default config's reward (alt-profanity-check) and
generation (24 new tokens, min_length 5). Each runs 1 warm-up step, then --steps timed PPO steps
(engine.ppo.PPOTrainer.step: generate, score, policy and reference forward, 4 mini-batch updates).

Then, on one batch of sampled responses: the per-token difference of log p under bf16 autocast vs float32 (same
weights), which is the rounding noise the KL estimate and the PPO ratio see during a bf16 run. Evaluation always
runs in float32 (engine/evaluate.py), so reported before/after numbers and KL carry no such noise.

Not a test; prints a table. bf16 is only faster where the chip has bf16 units (GPUs; CPUs with AVX512-BF16 or AMX).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 timed step at batch 4 on a tiny random model built in a temporary folder (seconds)")
    args = ap.parse_args()
    if args.smoke:
        import tempfile

        from _tiny import build_gpt2

        tmp = tempfile.TemporaryDirectory(prefix="bench_precision_")
        build_gpt2(Path(tmp.name), vocab=300, n_embd=32, n_layer=2, n_head=2, n_dialogues=42)
        args.model, args.steps, args.batch = tmp.name, 1, 4

    import torch

    from engine import data as data_mod
    from engine.config import RunConfig
    from engine.models import encode_queries, generate, load_policy, logprobs_from_logits, min_new_tokens
    from engine.ppo import PPOTrainer
    from engine.rewards import build_reward
    from engine.runner import prepare_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig.load(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    cfg.model.name_or_path = args.model
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size = args.batch, max(1, args.batch // 4)
    if args.smoke:
        from _tiny import prompt_source

        cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = prompt_source(), 4, 64
        cfg.data.validation_size = 0
        cfg.generation.max_new_tokens, cfg.generation.min_length = 4, 2
    train, _ = prepare_prompts(cfg)
    reward = build_reward(cfg.reward)

    def reward_fn(prompts, responses):
        result = reward.score(prompts, responses)
        return result.scores, result.raw

    rows = []
    bundle = None
    for precision in ("none", "bf16"):
        cfg.model.mixed_precision = precision
        torch.manual_seed(0)
        bundle = load_policy(cfg.model)
        per_step = args.batch // cfg.ppo.num_generations  # each prompt is sampled num_generations times
        prompts = data_mod.truncate_left(train[: per_step * (args.steps + 1)], bundle.tokenizer,
                                         cfg.data.max_prompt_tokens, template=cfg.data.template)
        trainer = PPOTrainer(bundle, reward_fn, cfg.ppo, cfg.generation, max_prompt_tokens=cfg.data.max_prompt_tokens)
        steps, rollouts = [], []
        for i in range(args.steps + 1):
            m = trainer.step(prompts[i * per_step:(i + 1) * per_step])
            if i:  # the first step warms up
                steps.append(m["time/step_s"])
                rollouts.append(m["time/rollout_s"])
        rows.append((precision, statistics.median(steps), statistics.median(rollouts)))
        print(f"{precision}: step {statistics.median(steps):.2f} s (rollout {statistics.median(rollouts):.2f} s)",
              flush=True)

    # Rounding noise of bf16 on log-probs, same weights (the last bundle, trained a few steps in bf16).
    q, qm = encode_queries(bundle, prompts[:per_step] * cfg.ppo.num_generations, cfg.data.max_prompt_tokens,
                           bundle.policy.device)
    r, rm = generate(bundle, bundle.policy.lm, q, qm, cfg.generation)
    n_min, eos = min_new_tokens(cfg.generation), bundle.tokenizer.eos_token_id
    with torch.no_grad():
        lp16 = logprobs_from_logits(bundle.policy(q, qm, r, rm)[0], r, 1.0, n_min, eos)
        with bundle.full_precision():
            lp32 = logprobs_from_logits(bundle.policy(q, qm, r, rm)[0], r, 1.0, n_min, eos)
    mask = rm.float()
    diff = (lp16 - lp32) * mask
    per_seq = diff.sum(1)

    base = rows[0][1]
    print(f"\nmodel {args.model}, batch {args.batch}, {cfg.generation.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps (medians)")
    print(f"{'precision':10}{'s/step':>10}{'rollout s':>12}{'samples/s':>12}{'speed-up':>10}")
    for precision, step_s, rollout_s in rows:
        print(f"{precision:10}{step_s:>10.2f}{rollout_s:>12.2f}{args.batch / step_s:>12.2f}{base / step_s:>9.2f}x")
    print(f"\nbf16 - float32 log p per token: mean |diff| {float(diff.abs().sum() / mask.sum()):.4f}, "
          f"max {float(diff.abs().max()):.4f}; summed per response: mean {float(per_seq.mean()):+.4f}, "
          f"std {float(per_seq.std()):.4f} nats")


if __name__ == "__main__":
    main()
