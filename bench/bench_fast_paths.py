"""Each saving of the fast paths alone: a prompt's prefill shared by its k responses, the reference's (and the
policy's) prompt states reused, then one whole PPO step and one evaluation batch with and without them.

Usage: python bench/bench_fast_paths.py [--model builtin:smollm2] [--prompts 8] [--k 4] [--reps 2]
                                        [--eval-batches 16,32,64] [--threads N] [--smoke]

The default config's settings: 96-token HH prompts ("Summarize the following conversation.", chat template on),
24 new tokens (min_length 5), temperature 1, 8 prompts x 4 responses (32 a PPO step), the PPO passes under the
config's mixed precision (bf16 autocast) and evaluation in float32. Every pair (plain, fast) is timed in the same
process, alternating, `--reps` times; the table gives medians and the ratio plain / fast. The plain path repeats
each prompt k times; the fast one runs it once (engine.models.prompt_states) and copies its KV cache k times.

Parts:
- generate          policy sampling of 8 x 4 responses (prefill sharing)
- reference         the reference's log-probs of those responses (reference reuse: each prompt once)
- policy stats      the policy's old log-probs and values (the rollout's prompt states reused: prompt not rerun)
- PPO step          engine.ppo.PPOTrainer.step with share_prompt_states True / False (1 warm-up each, then
                    alternating), and its parts: rollout (sampling + reward), stats (old log-probs, values,
                    reference, GAE), update (the mini-batches: fast = whole prompts, each run once per mini-batch)
- evaluation        engine.evaluate.generate_responses("after": sampling, the policy's and the reference's log-probs)
                    of the same prompts, k per prompt, batch 32; then responses/s at each of --eval-batches

Not a test; prints a table. The numbers depend on how busy the machine is: say so when you quote them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="responses per prompt")
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions of each part (medians)")
    ap.add_argument("--eval-batches", default="16,32,64", help="evaluation batch sizes to time (responses)")
    ap.add_argument("--no-ppo", action="store_true", help="skip the whole PPO step")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation parts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="every part once on a tiny random model (seconds)")
    args = ap.parse_args()
    tmp = None
    if args.smoke:
        import tempfile

        from _tiny import build_gpt2

        tmp = tempfile.TemporaryDirectory(prefix="bench_fast_paths_")
        build_gpt2(Path(tmp.name), vocab=300, n_embd=32, n_layer=2, n_head=2, n_dialogues=42)
        args.model, args.prompts, args.k, args.reps, args.eval_batches = tmp.name, 2, 2, 1, "2,4"

    import torch
    from _tiny import prompt_source

    from engine import data as data_mod
    from engine.config import RunConfig
    from engine.evaluate import generate_responses
    from engine.models import (
        encode_queries,
        generate,
        load_policy,
        logprobs_from_logits,
        min_new_tokens,
        prompt_states,
        reference_logprobs,
    )
    from engine.ppo import PPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = RunConfig.load(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    cfg.model.name_or_path = args.model
    cfg.model.device = "cpu" if args.smoke else cfg.model.device
    gen, k, n = cfg.generation, args.k, args.prompts
    if args.smoke:
        cfg.data.max_prompt_tokens, gen.max_new_tokens, gen.min_length = 48, 4, 2
    torch.manual_seed(0)
    bundle = load_policy(cfg.model)
    tok, lm, dev = bundle.tokenizer, bundle.policy.lm, bundle.policy.device
    raw = data_mod.load_prompts(data_mod.resolve_source(prompt_source()), template=cfg.data.template,
                                min_chars=cfg.data.min_chars, max_chars=cfg.data.max_chars)
    prompts = data_mod.truncate_left(raw[: n * (4 + args.reps)], tok, cfg.data.max_prompt_tokens, template=cfg.data.template)
    q, qm = encode_queries(bundle, prompts[:n], cfg.data.max_prompt_tokens, dev)
    qr, qmr = q.repeat_interleave(k, 0), qm.repeat_interleave(k, 0)
    n_min, eos, temp = min_new_tokens(gen), tok.eos_token_id, gen.temperature
    bundle.policy.eval()
    rows: list[tuple[str, float, float]] = []

    def pair(name, plain, fast):
        times: dict[str, list[float]] = {"plain": [], "fast": []}
        for _ in range(args.reps):
            for label, fn in (("plain", plain), ("fast", fast)):
                times[label].append(_timed(fn)[0])
        p, f = statistics.median(times["plain"]), statistics.median(times["fast"])
        rows.append((name, p, f))
        print(f"{name:18}plain {p:7.2f} s   fast {f:7.2f} s   x{p / f:.2f}", flush=True)

    def sample(repeats):
        torch.manual_seed(1)
        return generate(bundle, lm, q if repeats > 1 else qr, qm if repeats > 1 else qmr, gen, repeats=repeats)

    generate(bundle, lm, q[:1], qm[:1], gen)  # warm-up
    pair("generate", lambda: sample(1), lambda: sample(k))
    r, rm = sample(k)

    pair("reference",
         lambda: reference_logprobs(bundle, qr, qmr, r, rm, temp, n_min),
         lambda: reference_logprobs(bundle, q, qm, r, rm, temp, n_min, repeats=k))

    def policy_stats(states):
        with torch.no_grad():
            if states is None:
                logits, values = bundle.policy(qr, qmr, r, rm)
            else:
                logits, values = bundle.policy(q, qm, r, rm, repeats=k, states=states)
            return logprobs_from_logits(logits, r, temp, n_min, eos), values

    with bundle.autocast():  # the rollout computed these for its generation: reused, not timed again
        states = prompt_states(lm, bundle.seq2seq, q, qm)
    pair("policy stats", lambda: policy_stats(None), lambda: policy_stats(states))

    if not args.no_ppo:
        cfg.ppo.num_generations, cfg.ppo.batch_size = k, n * k
        cfg.ppo.mini_batch_size = max(1, min(cfg.ppo.mini_batch_size, n * k))

        def reward_fn(ps, rs):
            scores = [float(len(x)) / 100 for x in rs]
            return scores, {"length": scores}

        trainers = {}
        for share in (False, True):  # both in memory, so their steps can alternate (the load changes over time)
            torch.manual_seed(0)
            trainers[share] = PPOTrainer(load_policy(cfg.model), reward_fn, cfg.ppo, gen,
                                         max_prompt_tokens=cfg.data.max_prompt_tokens, share_prompt_states=share)
            trainers[share].step(prompts[n:2 * n])  # warm-up
        parts = ("time/step_s", "time/rollout_s", "time/stats_s", "time/update_s")
        seen: dict[bool, list[dict]] = {False: [], True: []}
        for i in range(max(1, args.reps)):
            for share in (False, True):
                m = trainers[share].step(prompts[(2 + i) * n:(3 + i) * n])
                seen[share].append({p: m[p] for p in parts})
        for part in parts:
            p = statistics.median(x[part] for x in seen[False])
            f = statistics.median(x[part] for x in seen[True])
            name = "PPO step" if part == "time/step_s" else f"  {part[5:-2]}"
            rows.append((name, p, f))
            print(f"{name:18}plain {p:7.2f} s   fast {f:7.2f} s   x{p / f:.2f}", flush=True)
        del trainers

    def evaluation(share, batch, count=n):
        return generate_responses(bundle, prompts[:count], gen, which="after", batch_size=batch,
                                  max_prompt_tokens=cfg.data.max_prompt_tokens, seed=1234, repeats=k,
                                  share_prompt_states=share)

    eval_batch = n * k if args.smoke else cfg.evaluation.batch_size
    if not args.no_eval:
        pair("evaluation", lambda: evaluation(False, eval_batch), lambda: evaluation(True, eval_batch))

    print(f"\nmodel {args.model}, {n} prompts x {k} responses, prompts {q.shape[1]} tokens (padded), "
          f"{gen.max_new_tokens} new tokens, PPO passes: mixed_precision {cfg.model.mixed_precision}, "
          f"{torch.get_num_threads()} threads, medians of {args.reps}")
    print(f"{'part':18}{'plain s':>10}{'fast s':>10}{'plain/fast':>12}")
    for name, p, f in rows:
        print(f"{name:18}{p:>10.2f}{f:>10.2f}{p / f:>11.2f}x")

    # evaluation throughput by batch size (fast path), on 2 x the largest batch's responses
    sizes = [] if args.no_eval else [int(s) for s in args.eval_batches.split(",") if s.strip()]
    count = max(1, min(len(prompts), 2 * max(sizes or [1]) // k))
    if sizes:
        print(f"\nevaluation batch size ({count} prompts x {k}, fast path): responses/s")
    for size in sizes:
        evaluation(True, size, count=max(1, size // k))  # warm-up at this size
        t, out = _timed(lambda size=size: evaluation(True, size, count))
        print(f"  batch {size:4d}: {len(out[0]) / t:7.2f} responses/s ({t:.1f} s)", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
