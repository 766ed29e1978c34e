"""PPO data parallel on CPU: one PPO step of a global batch in 1 process vs 2 processes (DDP over gloo, each rank
sampling and training on half the batch), same model, batch and settings.

Usage: python bench/bench_ddp.py [--steps 4] [--batch 16] [--threads 1] [--smoke]

The 2 ranks run as child processes of this script started the way `accelerate launch` starts them (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment), the 1-process side in this process, each with --threads
torch threads: the built-in-sized random GPT-2 from bench/_tiny.py (4 layers, 256 wide, 4.3 M parameters), HH prompts cut
to 64 tokens, --batch responses a step (2 per prompt), mini-batches of a quarter of the batch, 16 new tokens, a cheap
vowel-share reward. 1 warm-up step, then --steps timed steps; the table gives the median `time/step_s` (the slowest
rank's), its parts, and the speed-up. Not a test; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def child(args) -> None:
    """One rank (or the lone process): the timed PPO steps; rank 0 writes them to --out as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    from _tiny import prompt_source

    from engine import data as data_mod
    from engine.config import GenerationSettings, ModelSettings, PPOSettings
    from engine.distributed import group_from_env
    from engine.models import load_policy
    from engine.ppo import PPOTrainer

    group = group_from_env()
    torch.manual_seed(0)
    bundle = load_policy(ModelSettings(name_or_path=args.model, device="cpu", mixed_precision="none"))
    k = 2
    n_prompts = args.batch // k
    raw = data_mod.load_prompts(data_mod.resolve_source(prompt_source()))[: n_prompts * (args.steps + 1)]
    prompts = data_mod.truncate_left(raw, bundle.tokenizer, 64)
    gen = GenerationSettings(max_new_tokens=args.new_tokens, min_length=args.new_tokens)

    def reward(p, responses):
        return [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses], {}

    ppo = PPOSettings(batch_size=args.batch, mini_batch_size=max(k, args.batch // 4), num_generations=k,
                      learning_rate=1e-5, seed=0)
    trainer = PPOTrainer(bundle, reward, ppo, gen, max_prompt_tokens=64, group=group)
    torch.manual_seed(1 + group.rank)
    steps = []
    for i in range(args.steps + 1):
        batch = prompts[i * n_prompts:(i + 1) * n_prompts]
        metrics = trainer.step(group.shard(batch, "prompts"))
        if i:
            steps.append({key: metrics[key] for key in ("time/step_s", "time/rollout_s", "time/stats_s",
                                                       "time/update_s", "time/samples_per_s")})
    if group.is_main:
        Path(args.out).write_text(json.dumps(steps))
    if group.distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, world: int, out: Path) -> list[dict]:
    """`world` child processes (1: this process, no process group at all); rank 0's timed steps."""
    if world == 1:
        child(argparse.Namespace(**{**vars(args), "out": str(out)}))
        return json.loads(out.read_text())
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        cmd = [sys.executable, __file__, "--child", "--out", str(out), "--model", args.model, "--steps",
               str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads), "--new-tokens",
               str(args.new_tokens)]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{world}-process run failed: exit codes {codes}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--model", default="")
    ap.add_argument("--smoke", action="store_true", help="1 timed step of batch 4 on a tiny random model (seconds)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        from _tiny import build_gpt2

        if not args.model:
            model_dir = Path(tmp) / "model"
            if args.smoke:
                info = build_gpt2(model_dir, vocab=300, n_embd=32, n_layer=2, n_head=2, n_dialogues=42)
                args.steps, args.batch, args.new_tokens = 1, 4, 4
            else:
                info = build_gpt2(model_dir)
            args.model = str(model_dir)
            print(f"model: random GPT-2, {info['params'] / 1e6:.2f} M parameters, vocab {info['vocab']}")
        rows = {}
        for world in (1, 2):
            steps = launch(args, world, Path(tmp) / f"steps{world}.json")
            rows[world] = {key: statistics.median(s[key] for s in steps) for key in steps[0]}
    print(f"batch {args.batch} responses a step ({args.batch // 2} prompts x 2), {args.new_tokens} new tokens, "
          f"{args.threads} thread(s) a process, median of {args.steps} timed steps")
    print(f"{'processes':>10}{'s/step':>9}{'rollout s':>11}{'stats s':>9}{'update s':>10}{'samples/s':>11}"
          f"{'speed-up':>10}")
    for world, r in rows.items():
        print(f"{world:>10}{r['time/step_s']:>9.3f}{r['time/rollout_s']:>11.3f}{r['time/stats_s']:>9.3f}"
              f"{r['time/update_s']:>10.3f}{r['time/samples_per_s']:>11.2f}"
              f"{rows[1]['time/step_s'] / r['time/step_s']:>9.2f}x")


if __name__ == "__main__":
    main()
