"""Measure RL training throughput on one tiny model: the engine's PPO vs TRL's RLOO vs a per-prompt rollout.

Usage: python bench/bench_ppo.py [--steps 5] [--threads N] [--smoke]

All three methods start from the same randomly initialised 4-layer GPT-2 (built in a temporary folder, with a
byte-level BPE trained on 300 HH dialogues), see the same 16 prompts (HH summarisation prompts cut to 128 tokens),
sample exactly 32 new tokens per response, and are scored by the same cheap Python reward (share of letters that are
'e'), so the numbers measure generation + bookkeeping + the update, not the reward:

  (a) engine         engine.ppo.PPOTrainer.step: one batched generate call for the 16 prompts, then PPO
  (b) trl-rloo       TRL 1.16 RLOOTrainer, 16 completions (8 prompts x 2 generations) per optimiser step
  (c) per-prompt     the same PPOTrainer, but the rollout generates each prompt alone (batch 1), as the seed did;
                     scoring and the PPO update are unchanged, so only the rollout differs from (a)

Each method runs 1 warm-up step, then --steps timed steps. Not a test; CPU only; prints a table.
On a CPU shared with other jobs pass --threads 1: torch's spinning worker threads then lose far more time than
they gain (generation ran 10x slower with 2 threads than with 1 on 2 busy cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never wait on the network

from engine.config import GenerationSettings, ModelSettings, PPOSettings  # noqa: E402

BATCH = 16  # prompts (engine) or completions (RLOO) per step
MINI_BATCH = 4  # engine PPO mini-batch; also RLOO's micro-batch, so forward/backward shapes match
PROMPT_TOKENS = 128
NEW_TOKENS = 32  # min = max, so every response has exactly this many tokens
N_DIALOGUES = 300  # tokenizer training corpus
VOCAB = 4096  # as the built-in tiny policy
EMBD, LAYERS = 256, 4
SEED = 0
# --smoke: every code path once on a 2-layer, 32-wide model (seconds; the numbers mean nothing)
SMOKE = dict(BATCH=4, MINI_BATCH=2, PROMPT_TOKENS=64, NEW_TOKENS=4, N_DIALOGUES=42, VOCAB=300, EMBD=32, LAYERS=2)


@dataclass
class Result:
    """Timed steps of one method (warm-up excluded)."""

    method: str
    samples: int  # prompts (engine) or completions (RLOO) processed in the timed steps
    seconds: float  # wall time of the timed steps
    steps: int
    rollout_seconds: float | None = None  # of which generation + scoring (engine methods only)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def s_per_step(self) -> float:
        return self.seconds / self.steps


# --------------------------------------------------------------------------------------------------
# The shared model, prompts and reward
# --------------------------------------------------------------------------------------------------
def build_model(out_dir: Path) -> dict:
    """A random-init GPT-2 (LAYERS layers, EMBD wide, 4 heads) with a BPE trained on HH dialogues, saved in out_dir."""
    from _tiny import build_gpt2

    return build_gpt2(out_dir, vocab=VOCAB, n_embd=EMBD, n_layer=LAYERS, n_head=4, n_dialogues=N_DIALOGUES, seed=SEED)


def bench_prompts(model_dir: Path) -> list[str]:
    """16 HH summarisation prompts, each long enough to be cut (from the left) to PROMPT_TOKENS tokens."""
    from _tiny import prompt_source
    from transformers import AutoTokenizer

    from engine.data import load_prompts, truncate_left

    tok = AutoTokenizer.from_pretrained(model_dir)
    # long dialogues only, so every prompt ends up at the budget and no method gains or loses from padding
    source = prompt_source()
    candidates = load_prompts(source, min_chars=800 if source != "builtin" else 100, max_chars=100_000)
    long = [p for p in candidates if len(tok(p)["input_ids"]) > PROMPT_TOKENS][:BATCH]
    if len(long) < BATCH:
        raise RuntimeError(f"only {len(long)} prompts longer than {PROMPT_TOKENS} tokens in {source}")
    return truncate_left(long, tok, PROMPT_TOKENS)


def e_share(texts: list[str]) -> list[float]:
    """Share of letters that are 'e' in each text (0 for a text without letters): cheap, and not constant."""
    out = []
    for text in texts:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(letters.count("e") / len(letters) if letters else 0.0)
    return out


def engine_reward(prompts, responses):
    scores = e_share(list(responses))
    return scores, {"e_share": scores}


def e_share_reward(prompts, completions, **kwargs) -> list[float]:
    """The same reward in TRL's reward-function signature."""
    return e_share(list(completions))


# --------------------------------------------------------------------------------------------------
# (a) and (c): the engine's PPOTrainer, with its batched rollout or a per-prompt one
# --------------------------------------------------------------------------------------------------
def per_prompt_rollout(self, prompts, repeats=1):
    """PPOTrainer.rollout, but generating each prompt alone (batch 1) like the seed; the rest is unchanged."""
    import torch

    from engine.models import encode_queries, generate
    from engine.ppo import Rollout, decode_responses

    policy, tok = self.bundle.policy, self.bundle.tokenizer
    prompts = [p for p in prompts for _ in range(repeats)]
    query_ids, query_mask = encode_queries(self.bundle, prompts, self.max_prompt_tokens, policy.device)
    policy.eval()
    rows, masks = [], []
    for prompt in prompts:
        q, qm = encode_queries(self.bundle, [prompt], self.max_prompt_tokens, policy.device)
        r, rm = generate(self.bundle, policy.lm, q, qm, self.gen)
        rows.append(r[0])
        masks.append(rm[0])
    # right-pad the responses into one batch for the (batched) PPO update
    width = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=rows[0].dtype, device=policy.device)
    response_mask = torch.zeros((len(rows), width), dtype=masks[0].dtype, device=policy.device)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        response_ids[i, :len(r)] = r
        response_mask[i, :len(m)] = m
    responses = decode_responses(tok, response_ids, response_mask)
    scores, raw = self.reward_fn(prompts, responses)
    return Rollout(prompts, responses, query_ids, query_mask, response_ids, response_mask,
                   torch.tensor(scores, dtype=torch.float32, device=policy.device), raw)


def bench_engine(model_dir: Path, prompts: list[str], steps: int, per_prompt: bool) -> Result:
    import torch

    from engine.models import load_policy
    from engine.ppo import PPOTrainer

    torch.manual_seed(SEED)
    bundle = load_policy(ModelSettings(name_or_path=str(model_dir), device="cpu", mixed_precision="none"))
    trainer = PPOTrainer(bundle, engine_reward,  # one response per prompt, as TRL's PPO in the comparison
                         PPOSettings(batch_size=BATCH, mini_batch_size=MINI_BATCH, ppo_epochs=1, seed=SEED,
                                     num_generations=1),
                         GenerationSettings(min_length=NEW_TOKENS, max_new_tokens=NEW_TOKENS),
                         max_prompt_tokens=PROMPT_TOKENS)
    if per_prompt:
        trainer.rollout = types.MethodType(per_prompt_rollout, trainer)  # this instance only
    trainer.step(prompts)  # warm-up
    t0, rollout = time.perf_counter(), 0.0
    for _ in range(steps):
        metrics = trainer.step(prompts)
        rollout += metrics["time/rollout_s"]
        if metrics["env/response_length_mean"] != NEW_TOKENS:
            raise RuntimeError(f"responses are {metrics['env/response_length_mean']} tokens, not {NEW_TOKENS}")
    seconds = time.perf_counter() - t0
    name = "(c) engine PPO, per-prompt rollout" if per_prompt else "(a) engine PPOTrainer"
    return Result(name, BATCH * steps, seconds, steps, rollout)


# --------------------------------------------------------------------------------------------------
# (b) TRL 1.16 RLOOTrainer
# --------------------------------------------------------------------------------------------------
def bench_rloo(model_dir: Path, prompts: list[str], steps: int, work_dir: Path) -> tuple[Result, float, float]:
    """Returns (timed steps after the warm-up, trainer construction seconds, whole trainer.train() seconds)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    class StepClock(TrainerCallback):
        """perf_counter at the end of every optimiser step."""

        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    torch.manual_seed(SEED)
    args = RLOOConfig(
        output_dir=str(work_dir / "rloo"), max_steps=steps + 1, seed=SEED,
        # 16 completions per optimiser step, in micro-batches of 4 like the engine's PPO mini-batches
        num_generations=2, per_device_train_batch_size=MINI_BATCH, gradient_accumulation_steps=BATCH // MINI_BATCH,
        max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS},
        temperature=1.0, top_k=0, top_p=1.0, learning_rate=1.41e-5,
        # CPU facts (shared/notes/libraries.md); checkpointing off: it only costs time here, and the engine has none
        # (activation_checkpointing is transformers 5's name for gradient_checkpointing, which TRL turns on)
        bf16=False, use_cpu=True, activation_checkpointing=False, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    clock = StepClock()
    t0 = time.perf_counter()
    trainer = RLOOTrainer(model=str(model_dir), reward_funcs=[e_share_reward], args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}),
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict
    if trainer.args.gradient_checkpointing or trainer.model.is_activation_checkpointing:
        raise RuntimeError("gradient checkpointing is on in the RLOO trainer; the comparison needs it off")
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t0
    if len(clock.ends) != steps + 1:
        raise RuntimeError(f"RLOO ran {len(clock.ends)} optimiser steps, expected {steps + 1}")
    lengths = [row.get("completions/mean_length") for row in trainer.state.log_history]
    lengths = [x for x in lengths if x is not None]
    if lengths and min(lengths) != NEW_TOKENS:
        raise RuntimeError(f"RLOO completions were {min(lengths)} tokens, not {NEW_TOKENS}")
    result = Result("(b) TRL 1.16 RLOOTrainer", BATCH * steps, clock.ends[-1] - clock.ends[0], steps)
    return result, t_setup, t_train


# --------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method, after 1 warm-up step")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--smoke", action="store_true", help="1 timed step of each method on a tiny model (seconds)")
    args = ap.parse_args()
    if args.smoke:
        globals().update(SMOKE)
        args.steps = 1
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")

    import torch
    import transformers

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # transformers 5 renamed gradient_checkpointing; TRL 1.16 still reads the old names and warns every step
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")

    with tempfile.TemporaryDirectory(prefix="bench_ppo_") as tmp:
        model_dir = Path(tmp) / "tiny-gpt2"
        info = build_model(model_dir)
        prompts = bench_prompts(model_dir)
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
        n_tok = [len(tok(p)["input_ids"]) for p in prompts]
        print(f"model: GPT-2 {LAYERS}x{EMBD}, 4 heads, random init, {info['params'] / 1e6:.2f}M params, vocab {info['vocab']}")
        print(f"batch: {BATCH} prompts of {min(n_tok)}-{max(n_tok)} tokens, {NEW_TOKENS} new tokens each; "
              f"{args.steps} timed steps after 1 warm-up; torch threads {torch.get_num_threads()}")

        results = [bench_engine(model_dir, prompts, args.steps, per_prompt=False)]
        print(f"  {results[-1].method}: {results[-1].s_per_step:.2f} s/step", flush=True)
        rloo, t_setup, t_train = bench_rloo(model_dir, prompts, args.steps, Path(tmp))
        results.append(rloo)
        print(f"  {rloo.method}: {rloo.s_per_step:.2f} s/step", flush=True)
        results.append(bench_engine(model_dir, prompts, args.steps, per_prompt=True))
        print(f"  {results[-1].method}: {results[-1].s_per_step:.2f} s/step", flush=True)

    base = results[0].samples_per_s
    print()
    print(f"{'method':<36} {'samples/s':>10} {'s/step':>8} {'rollout s/step':>15} {'vs engine':>10}")
    for r in results:
        roll = f"{r.rollout_seconds / r.steps:.2f}" if r.rollout_seconds is not None else "-"
        print(f"{r.method:<36} {r.samples_per_s:>10.2f} {r.s_per_step:>8.2f} {roll:>15} "
              f"{r.samples_per_s / base:>9.2f}x")
    print(f"\nRLOO: trainer construction {t_setup:.1f} s; whole trainer.train() {t_train:.1f} s "
          f"for {args.steps + 1} steps (warm-up included)")


if __name__ == "__main__":
    main()
