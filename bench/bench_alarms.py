"""What the reward-hacking alarms cost per PPO step: the detectors, and the probe evaluation, against a step.

Usage: python bench/bench_alarms.py [--smoke] [--model builtin:smollm2] [--steps 3] [--device auto]

The default config (RunConfig(): SmolLM2-135M, 32 responses a step, 24 new tokens, bf16 autocast, the jigsaw
evaluator, alarms at their defaults: a probe of 16 held-out prompts every 7 steps) runs 1 warm-up step and --steps
timed PPO steps (engine.ppo.PPOTrainer.step). After each, as a run does (engine.methods.ppo_alarms.RunAlarms), it
times building the detectors' view of the step (per-sample reference log-prob, entropy, KL, token ids) plus every
detector (`alarms`), and one probe (the policy answers the probe prompts, the evaluator scores them: `probe`).
Reported: medians, and the cost per step at the defaults, alarms + probe / probe_every (+ the probe at step 1,
spread over the run's steps), as a share of the step.

--smoke: the built-in tiny GPT-2, 8 responses a step, the profanity evaluator (seconds; for CI). Not a test:
prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, small batch, profanity evaluator")
    ap.add_argument("--model", default=None, help="policy (default: the config's, builtin:smollm2)")
    ap.add_argument("--steps", type=int, default=3, help="timed PPO steps (after one warm-up step)")
    ap.add_argument("--device", default=None, help="model.device (default: the config's, auto)")
    args = ap.parse_args(argv)

    import torch

    from engine import data as data_mod
    from engine.config import RewardBackendSettings, RunConfig
    from engine.methods.lifecycle import prepare_prompts
    from engine.methods.ppo import PromptBatches
    from engine.methods.ppo_alarms import RunAlarms
    from engine.models import load_policy, pick_device
    from engine.ppo import PPOTrainer
    from engine.rewards import build_backend, build_reward

    cfg = RunConfig()
    if args.smoke:
        cfg.model.name_or_path, cfg.model.mixed_precision = "builtin:tiny-gpt2", "none"
        cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.generation.max_new_tokens = 8, 4, 8
        cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
        cfg.data.holdout_size = 32
        args.steps = 1
    if args.model:
        cfg.model.name_or_path = args.model
    if args.device:
        cfg.model.device = args.device
    cfg.check()
    device = pick_device(cfg.model.device)
    train, holdout = prepare_prompts(cfg)
    reward = build_reward(cfg.reward, device=device)
    evaluator = build_backend(cfg.evaluation.evaluator, device=device)
    torch.manual_seed(cfg.ppo.seed)
    bundle = load_policy(cfg.model)
    tok, budget, template = bundle.tokenizer, cfg.data.max_prompt_tokens, cfg.data.template
    train = data_mod.truncate_left(train, tok, budget, template=template)
    holdout = data_mod.truncate_left(holdout, tok, budget, template=template)

    def reward_fn(prompts, responses):
        result = reward.score(prompts, responses)
        return result.scores, result.raw

    rollouts = []
    trainer = PPOTrainer(bundle, reward_fn, cfg.ppo, cfg.generation, max_prompt_tokens=budget,
                         callbacks=[lambda step, metrics, ro: rollouts.append(ro)])
    run = SimpleNamespace(cfg=cfg, bundle=bundle, evaluator=evaluator, holdout=holdout, validation=[], store=None,
                          run_id="bench")
    alarms = RunAlarms(run, reward.names)
    batches = PromptBatches(train, cfg.ppo.batch_size // cfg.ppo.num_generations, cfg.data.split_seed)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    trainer.step(next(batches))  # warm-up
    alarms.probe(1)
    step_s, alarm_s, probe_s = [], [], []
    every = cfg.alarms.probe_every
    for i in range(args.steps):
        sync()
        t0 = time.perf_counter()
        metrics = trainer.step(next(batches))
        sync()
        step_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        view = alarms.view(2 + i * every + 1, metrics, rollouts[-1], trainer.last)  # a step without the probe
        alarms.monitor.observe(view)
        sync()
        alarm_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        alarms.probe(every)  # a probe step's extra work
        sync()
        probe_s.append(time.perf_counter() - t0)
        print(f"step {i + 1}: PPO step {step_s[-1]:.3f} s, alarms {alarm_s[-1]:.4f} s, probe {probe_s[-1]:.3f} s",
              flush=True)  # as it goes: a slow machine still leaves numbers

    step, alarm, probe = (statistics.median(x) for x in (step_s, alarm_s, probe_s))
    total = cfg.ppo.max_ppo_steps
    probes = sum(1 for s in range(1, total + 1) if alarms.monitor.probe_due(s))
    per_step = alarm + probe * probes / total
    print(f"model {cfg.model.name_or_path} on {device}, {cfg.ppo.batch_size} responses a step, "
          f"{cfg.generation.max_new_tokens} new tokens, evaluator {cfg.evaluation.evaluator.kind}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'PPO step':<40}{step:9.3f} s   (median of {len(step_s)})")
    print(f"{'alarms (view + 8 detectors)':<40}{alarm:9.4f} s   ({100 * alarm / step:.2f} % of a step)")
    print(f"{f'probe ({len(alarms.probe_prompts)} prompts, evaluator)':<40}{probe:9.3f} s   "
          f"({100 * probe / step:.1f} % of a step, at {probes} of {total} steps)")
    print(f"{'cost per step at the defaults':<40}{per_step:9.3f} s   ({100 * per_step / step:.2f} % of a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
