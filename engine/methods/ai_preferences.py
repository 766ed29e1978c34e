"""Method "dpo_ai": RLAIF into DPO — preference pairs labelled by the lab's reward backends, no human labels.

Responsible for: sampling two responses per training prompt from the base policy (the same prompts and sampling
settings PPO uses), letting the run's reward mix (cfg.reward: classifiers and/or LLM judges) pick the preferred
one, dropping ties (margin <= ai_preferences.min_margin) and identical pairs, storing the labelled pairs as
samples, and then training DPO (engine.methods.dpo.train_dpo, cfg.dpo) on them; evaluation as PPO's.

Not responsible for: DPO itself (dpo.py), the backends (engine.rewards), or the store keys (callbacks.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.config import RunConfig
from engine.methods.common import PREFIX, split_pairs, usable_pairs
from engine.methods.lifecycle import PolicyMethod, PolicyRun
from engine.progress import Progress


def sample_pairs(bundle, prompts: Sequence[str], gen, *, batch_size: int, max_prompt_tokens: int, seed: int,
                 progress: Callable[[int, int], None] | None = None) -> list[tuple[str, str, str]]:
    """(prompt, response A, response B): two samples per prompt from the base model (the reference), batched."""
    import torch

    from engine.models import encode_queries, generate
    from engine.ppo import decode_responses

    out: list[tuple[str, str, str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        doubled = [p for p in chunk for _ in range(2)]  # each prompt twice in one batch: two independent samples
        q, qm = encode_queries(bundle, doubled, max_prompt_tokens, bundle.policy.device)
        torch.manual_seed(seed + start)
        with bundle.reference_lm() as ref:
            r, rm = generate(bundle, ref, q, qm, gen)
        texts = decode_responses(bundle.tokenizer, r, rm)
        out += [(p, texts[2 * i], texts[2 * i + 1]) for i, p in enumerate(chunk)]
        if progress:
            progress(min(start + batch_size, len(prompts)), len(prompts))
    return out


def label_pairs(samples: Sequence[tuple[str, str, str]], reward, min_margin: float = 0.0
                ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """AI preference labels: the reward mix scores both responses; the higher one is chosen.

    Returns (pairs {prompt, chosen, rejected, margin, chosen_score, rejected_score}, stats). Pairs whose two
    responses are identical or whose score margin is <= min_margin are dropped (ties carry no preference).
    """
    prompts = [s[0] for s in samples]
    a = reward.score(prompts, [s[1] for s in samples]).scores
    b = reward.score(prompts, [s[2] for s in samples]).scores
    pairs, identical, ties = [], 0, 0
    for (prompt, ra, rb), sa, sb in zip(samples, a, b, strict=True):
        if ra.strip() == rb.strip():
            identical += 1
            continue
        margin = abs(sa - sb)
        if not margin > min_margin:
            ties += 1
            continue
        chosen, rejected, sc, sr = (ra, rb, sa, sb) if sa > sb else (rb, ra, sb, sa)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin,
                      "chosen_score": sc, "rejected_score": sr})
    stats = {"ai_prompts": len(samples), "ai_pairs": len(pairs), "ai_identical_dropped": identical,
             "ai_ties_dropped": ties,
             "ai_mean_margin": sum(p["margin"] for p in pairs) / len(pairs) if pairs else float("nan")}
    return pairs, stats


class DPOAI(PolicyMethod):
    """DPO on pairs sampled from the base policy and labelled by the run's reward mix (cfg.reward)."""

    causal_only = True

    def seed(self, cfg: RunConfig) -> int:
        return cfg.dpo.seed

    def train(self, run: PolicyRun) -> dict[str, Any]:
        from engine.methods.callbacks import StoreCallback
        from engine.methods.dpo import fit_pairs, train_dpo
        from engine.rewards import build_reward

        cfg, store, run_id, notify = run.cfg, run.store, run.run_id, run.notify
        a, d = cfg.ai_preferences, cfg.dpo
        prompts = run.train_prompts[:a.num_prompts]  # the split already shuffled them (seeded)

        def prog(done: int, total: int) -> None:
            notify(Progress("label", done, total, f"sampling response pairs: {done}/{total} prompts"))
            run.check_cancel()

        samples = sample_pairs(run.bundle, prompts, cfg.generation, batch_size=a.batch_size,
                               max_prompt_tokens=cfg.data.max_prompt_tokens, seed=a.seed, progress=prog)
        notify(Progress("label", len(prompts), len(prompts), "the reward mix labels the pairs"))
        reward = build_reward(cfg.reward, device=run.device)
        try:
            pairs, stats = label_pairs(samples, reward, a.min_margin)
            stats.update(reward.metrics())  # judge accounting (calls, tokens, latency, cost) when judges label
        finally:
            reward.close()
        rows = []
        for i, p in enumerate(pairs):  # the AI-labelled training data, visible in the runs table
            rows.append({"idx": 2 * i, "prompt": p["prompt"], "response": p["chosen"], "reward": p["chosen_score"],
                         "scores": {"chosen": 1.0, "margin": p["margin"]}})
            rows.append({"idx": 2 * i + 1, "prompt": p["prompt"], "response": p["rejected"],
                         "reward": p["rejected_score"], "scores": {"chosen": 0.0, "margin": p["margin"]}})
        store.add_samples(run_id, 0, rows)
        if len(pairs) < 2:
            raise ValueError(f"the reward mix labelled only {len(pairs)} usable pairs out of {len(samples)} prompts "
                             f"({stats['ai_identical_dropped']} identical, {stats['ai_ties_dropped']} ties): raise "
                             "ai_preferences.num_prompts, lower min_margin, or sample more diverse responses")
        run.check_cancel()

        cap = usable_pairs(d.max_pairs, d.max_steps, d.batch_size, d.gradient_accumulation_steps)
        train_pairs, eval_pairs = split_pairs(pairs, min(d.eval_pairs, len(pairs) // 5), cap, cfg.data.split_seed,
                                              what="AI-labelled pairs")
        tok = run.bundle.tokenizer
        train_pairs = fit_pairs(train_pairs, tok, cfg.data.max_prompt_tokens, d.max_response_tokens)
        eval_pairs = fit_pairs(eval_pairs, tok, cfg.data.max_prompt_tokens, d.max_response_tokens)
        notify(Progress("train", 0, d.max_steps, f"DPO on {len(train_pairs)} AI-labelled pairs"))
        callback = StoreCallback(store, run_id, PREFIX["dpo_ai"], total_steps=d.max_steps, notify=notify)
        # No checkpoints: a resume would sample and label the pairs again (judge calls), so dpo_ai restarts whole.
        trainer, summary = train_dpo(run.bundle, train_pairs, eval_pairs, cfg, run.out_dir / "trl", [callback],
                                     hh_prompts=False, checkpoints=False)
        callback.raise_if_stopped()
        run.adopt(trainer)
        summary.update(stats, labeller=", ".join(b.display_name for b in cfg.reward.backends),
                       train_seconds=callback.final.get("train_runtime"))
        return summary
