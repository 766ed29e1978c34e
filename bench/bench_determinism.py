"""What deterministic mode costs: PPO steps with `model.deterministic` off, on (as shipped on CPU: fixed threads,
seeds), and on with torch's deterministic kernels forced (what it adds on GPUs), same threads and seed; and whether
two runs of one seed agree exactly in each mode.

Usage: python bench/bench_determinism.py [--model builtin:tiny-gpt2] [--steps 4] [--threads 1] [--smoke]

Each mode: load the policy inside engine.determinism.deterministic_run, then 1 warm-up and --steps timed
PPOTrainer.step calls (batch 8 = 4 prompts x 2, 16 new tokens, HH prompts cut to 64 tokens, a cheap vowel-share
reward); each mode runs twice, alternating, and the table gives the median step time and whether the two runs'
metrics (time/* left out) were identical. Not a test; prints a table.
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
    ap.add_argument("--model", default="builtin:tiny-gpt2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="1 timed step on a tiny random model (seconds)")
    args = ap.parse_args()
    tmp = None
    if args.smoke:
        import tempfile

        from _tiny import build_gpt2

        tmp = tempfile.TemporaryDirectory(prefix="bench_determinism_")
        build_gpt2(Path(tmp.name), vocab=300, n_embd=32, n_layer=2, n_head=2, n_dialogues=42)
        args.model, args.steps = tmp.name, 1

    from _tiny import prompt_source

    from engine import data as data_mod
    from engine.config import GenerationSettings, ModelSettings, PPOSettings
    from engine.determinism import deterministic_run
    from engine.models import load_policy
    from engine.ppo import PPOTrainer

    raw = data_mod.load_prompts(data_mod.resolve_source(prompt_source()))
    gen = GenerationSettings(max_new_tokens=16 if not args.smoke else 4, min_length=2)

    def reward(prompts, responses):
        scores = [sum(c in "aeiou" for c in r) / max(1, len(r)) for r in responses]
        return scores, {"vowels": scores}

    def run(mode: str):
        with deterministic_run(0, enabled=mode != "off", threads=args.threads,
                               device="cuda" if mode == "on+kernels" else "cpu"):
            bundle = load_policy(ModelSettings(name_or_path=args.model, device="cpu"))
            prompts = data_mod.truncate_left(raw[: 4 * (args.steps + 1)], bundle.tokenizer, 64)
            trainer = PPOTrainer(bundle, reward, PPOSettings(batch_size=8, mini_batch_size=4, num_generations=2,
                                                             learning_rate=1e-4, seed=0), gen, max_prompt_tokens=64)
            times, history = [], []
            for i in range(args.steps + 1):
                m = trainer.step(prompts[4 * i: 4 * i + 4])
                history.append({k: v for k, v in m.items() if not k.startswith("time/")})
                if i:
                    times.append(m["time/step_s"])
        return times, history

    modes = ("off", "on", "on+kernels")
    results: dict[str, list] = {m: [] for m in modes}
    for _ in range(2):
        for mode in modes:
            results[mode].append(run(mode))
    print(f"model {args.model}, {args.threads} threads, {args.steps} timed steps x 2 runs per mode")
    print(f"{'deterministic':14}{'s/step':>10}{'identical runs':>16}")
    base = None
    for mode in modes:
        (t1, h1), (t2, h2) = results[mode]
        med = statistics.median(t1 + t2)
        base = base or med
        print(f"{mode:14}{med:>10.3f}{str(h1 == h2):>16}   (x{med / base:.3f} of off)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
