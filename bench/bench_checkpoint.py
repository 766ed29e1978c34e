"""What a PPO checkpoint costs: seconds to write one vs seconds of a PPO step, and its size on disk.

Usage: python bench/bench_checkpoint.py [--smoke] [--model builtin:smollm2] [--steps 1] [--repeats 3] [--out DIR]

The default config (RunConfig(): SmolLM2-135M, 32 responses a step, 24 new tokens, bf16 autocast) runs 1 warm-up
step and --steps timed PPO steps (engine.ppo.PPOTrainer.step), then writes --repeats checkpoints exactly as a run
does (engine.methods.ppo.write_checkpoint inside engine.checkpoint.write_atomic: the trainable weights, Adam's two
moments, RNG states, ...). Reported: step seconds, checkpoint seconds, their ratio at the default interval
(checkpoint.every_steps) — the share of training time spent checkpointing — and the size on disk next to the
estimate from the parameter count (weights + Adam's exp_avg + exp_avg_sq, float32: 12 bytes a parameter).

--smoke: the built-in tiny GPT-2, 8 responses a step, one repeat (seconds; for CI). Not a test: prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, small batch, one repeat")
    ap.add_argument("--model", default=None, help="policy (default: the config's, builtin:smollm2)")
    ap.add_argument("--steps", type=int, default=1, help="timed PPO steps (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=3, help="checkpoints written")
    ap.add_argument("--out", default=None, help="where to write the checkpoints (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    from engine import data as data_mod
    from engine.checkpoint import step_dir, write_atomic
    from engine.config import RunConfig
    from engine.methods.lifecycle import prepare_prompts
    from engine.methods.ppo import PromptBatches, write_checkpoint
    from engine.models import load_policy
    from engine.ppo import PPOTrainer
    from engine.rewards import build_reward

    cfg = RunConfig()
    cfg.evaluation.enabled = False
    if args.smoke:
        cfg.model.name_or_path, cfg.model.mixed_precision = "builtin:tiny-gpt2", "none"
        cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.generation.max_new_tokens = 8, 4, 8
        args.steps, args.repeats = 1, 1
    if args.model:
        cfg.model.name_or_path = args.model
    cfg.check()
    train, _ = prepare_prompts(cfg)
    reward = build_reward(cfg.reward)
    torch.manual_seed(cfg.ppo.seed)
    bundle = load_policy(cfg.model)
    train = data_mod.truncate_left(train, bundle.tokenizer, cfg.data.max_prompt_tokens, template=cfg.data.template)

    def reward_fn(prompts, responses):
        result = reward.score(prompts, responses)
        return result.scores, result.raw

    trainer = PPOTrainer(bundle, reward_fn, cfg.ppo, cfg.generation, max_prompt_tokens=cfg.data.max_prompt_tokens)
    batches = PromptBatches(train, cfg.ppo.batch_size // cfg.ppo.num_generations, cfg.data.split_seed)
    trainer.step(next(batches))  # warm-up
    step_s = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.step(next(batches))
        step_s.append(time.perf_counter() - t0)

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    save_s, size = [], 0
    try:
        for i in range(args.repeats):
            t0 = time.perf_counter()
            path = write_atomic(step_dir(root, i + 1), lambda p, step=i + 1: write_checkpoint(
                p, trainer, batches, getattr(reward, "stats", {}), step=step, step_kls=[], train_seconds=0.0))
            save_s.append(time.perf_counter() - t0)
            size = dir_bytes(path)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)

    n_params = sum(p.numel() for p in bundle.policy.parameters() if p.requires_grad)
    step, save, every = statistics.median(step_s), statistics.median(save_s), cfg.checkpoint.every_steps
    print(f"model {cfg.model.name_or_path} ({n_params / 1e6:.1f} M trainable parameters), "
          f"{cfg.ppo.batch_size} responses a step, torch threads {torch.get_num_threads()}")
    print(f"{'PPO step':<34}{step:9.2f} s   (median of {len(step_s)})")
    print(f"{'checkpoint write':<34}{save:9.2f} s   (median of {len(save_s)}: {', '.join(f'{s:.2f}' for s in save_s)})")
    print(f"{'checkpoint size on disk':<34}{size / 2**20:9.1f} MiB (estimate 12 B x params: "
          f"{12 * n_params / 2**20:.1f} MiB)")
    print(f"{'cost at every_steps=' + str(every):<34}{100 * save / (every * step):9.2f} % of training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
