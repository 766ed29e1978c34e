"""The seed table of issue 17: one row per finished PPO run, computed from the store's evaluation rows.

Usage: python bench/split_table.py --db STORE RUN [RUN ...] [--never-tuned] [--markdown] [--smoke]

Per run: the split its numbers come from, mean Jigsaw toxicity before -> after, std, toxic rate, max, the change
with its paired bootstrap 95 % interval (whole prompts resampled), mean KL to the base, response length, relevance
(cosine of response and dialogue, with the interval of its change), what training moved (each reward backend's
`env/reward/...` signals, mean of the first quarter of steps -> mean of the last quarter: a reward the policy did not
learn shows as no change, whatever the evaluation says), wall time and where it went.

--never-tuned adds, for each run, the same numbers on the test prompts that were NOT in the hold-out that chose the
default settings before the splits existed (sessions 1-4 tuned on `engine.data.split`'s hold-out: the first
holdout_size prompts of a seeded shuffle of all filtered prompts, duplicates kept). Those prompts are rebuilt here
from the run's own data settings, so the subset is the set of test prompts no setting was ever chosen on.

--smoke: one tiny PPO run (the built-in tiny GPT-2, the built-in dialogues, profanity evaluator) into a temporary
store, then its table: every code path once, numbers meaningless.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def legacy_tuning_holdout(cfg) -> set[str]:
    """The prompts the pre-split hold-out held (engine.data.split before split_three): first holdout_size of a seeded
    shuffle of every filtered prompt, duplicates included. Untruncated prompt texts."""
    from engine import data

    d = cfg.data
    prompts = data.load_prompts(data.resolve_source(d.source), template=d.template,
                                min_chars=d.min_chars, max_chars=d.max_chars)
    order = list(range(len(prompts)))
    random.Random(d.split_seed).shuffle(order)
    return {prompts[i] for i in order[:d.holdout_size]}


def reward_moves(store, run_id: str) -> str:
    """Each reward signal's mean over the first quarter of the run's steps -> over the last quarter (at least one
    step each), as "name a -> b" parts; "-" for a run without reward metrics."""
    cols = [k for k in store.metric_keys(run_id) if k.startswith("env/reward/")]
    wide = store.metrics_wide(run_id, keys=cols) if cols else None
    if wide is None or len(wide) < 2:
        return "-"
    q = max(1, len(wide) // 4)
    parts = []
    for c in cols:
        head, tail = wide[c].iloc[:q].mean(), wide[c].iloc[-q:].mean()
        parts.append(f"{c[len('env/reward/'):]} {head:.3g} -> {tail:.3g}")
    return ", ".join(parts)


def run_rows(store, run_id: str, never_tuned: bool) -> list[dict]:
    """The table rows of one run: all its evaluated prompts, and with never_tuned the subset outside the old
    tuning hold-out."""
    import numpy as np

    from engine.config import RunConfig
    from engine.evaluate import bootstrap_change, toxicity_stats
    from engine.methods.lifecycle import prepare_prompts

    record = store.get_run(run_id)
    cfg = RunConfig.from_yaml(record.config_yaml)
    summary = record.summary or {}
    ev = store.evaluations(run_id)
    k = cfg.evaluation.samples_per_prompt
    _, evaluated = prepare_prompts(cfg)  # untruncated, in the order the run evaluated them
    sides = {}
    for phase in ("before", "after"):
        part = ev[ev.phase == phase].sort_values("idx")
        if len(part) != len(evaluated) * k:
            raise SystemExit(f"run {run_id}: {len(part)} {phase} rows for {len(evaluated)} prompts x {k}")
        sides[phase] = part
    # the stored prompt is the evaluated one cut from the left to the token budget: its end must match
    for i in (0, len(evaluated) - 1):
        stored = sides["before"].iloc[i * k].prompt
        if stored[-60:] not in evaluated[i]:
            raise SystemExit(f"run {run_id}: stored prompt {i} does not match the split's prompt {i}")
    subsets = [("all", np.ones(len(evaluated), bool))]
    if never_tuned:
        old = legacy_tuning_holdout(cfg)
        subsets.append(("never tuned on", np.array([p not in old for p in evaluated])))
    rows = []
    for label, keep_prompt in subsets:
        keep = np.repeat(keep_prompt, k)
        b = sides["before"].toxicity.to_numpy(float)[keep]
        a = sides["after"].toxicity.to_numpy(float)[keep]
        sb, sa = toxicity_stats(b, cfg.evaluation.toxic_threshold), toxicity_stats(a, cfg.evaluation.toxic_threshold)
        change = bootstrap_change(b, a, cfg.evaluation.bootstrap_samples, cfg.evaluation.seed, group_size=k)
        row = {"run": record.name or run_id, "seed": cfg.ppo.seed, "split": summary.get("split", "?"),
               "prompts": f"{label} ({int(keep_prompt.sum())})",
               "tox": f"{sb['mean']:.4f} -> {sa['mean']:.4f}", "std": f"{sb['std']:.3f} -> {sa['std']:.3f}",
               "toxic rate": f"{100 * sb['toxic_rate']:.2f} % -> {100 * sa['toxic_rate']:.2f} %",
               "max": f"{sb['max']:.2f} -> {sa['max']:.2f}",
               "change (95 % CI)": (f"{-100 * (sb['mean'] - sa['mean']) / sb['mean']:+.1f} % "
                                    f"({-change['pct_ci_high']:+.1f} .. {-change['pct_ci_low']:+.1f} %)")}
        kl = [s.get("kl") for s in sides["after"].scores]
        if all(v is not None for v in kl):
            row["KL"] = f"{np.asarray(kl, float)[keep].mean():.2f}"
        else:
            row["KL"] = f"{summary.get('mean_kl', math.nan):.2f}" if label == "all" else "-"
        lb = np.asarray([s.get("length", math.nan) for s in sides["before"].scores], float)[keep].mean()
        la = np.asarray([s.get("length", math.nan) for s in sides["after"].scores], float)[keep].mean()
        row["length (tokens)"] = f"{lb:.1f} -> {la:.1f} ({100 * (la - lb) / lb:+.0f} %)"
        rel_b = [s.get("relevance") for s in sides["before"].scores]
        rel_a = [s.get("relevance") for s in sides["after"].scores]
        if all(v is not None for v in rel_b + rel_a):
            rb, ra = np.asarray(rel_b, float)[keep], np.asarray(rel_a, float)[keep]
            rc = bootstrap_change(rb, ra, cfg.evaluation.bootstrap_samples, cfg.evaluation.seed, group_size=k)
            row["relevance"] = (f"{rb.mean():.3f} -> {ra.mean():.3f} "
                                f"(Δ {rc['delta_mean']:+.3f}, {rc['delta_ci_low']:+.3f} .. {rc['delta_ci_high']:+.3f})")
        if label == "all":
            phases = summary.get("phase_seconds") or {}
            row["wall s"] = f"{summary.get('wall_seconds', math.nan):.0f}"
            row["phases s"] = " / ".join(f"{phases[p]:.0f}" for p in
                                         ("load", "evaluate_before", "train", "evaluate_after") if p in phases)
            row["peak RSS GB"] = f"{summary.get('peak_rss_gb', math.nan):.2f}"
            row["training reward (first -> last quarter)"] = reward_moves(store, run_id)
        rows.append(row)
    return rows


def print_table(rows: list[dict], markdown: bool) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    else:
        for r in rows:
            print("; ".join(f"{c}: {r[c]}" for c in cols if c in r))


def smoke(tmp: Path) -> tuple[str, list[str]]:
    """A tiny completed PPO run in a temporary store; returns (store path, [run id])."""
    from engine.config import RewardBackendSettings, RunConfig
    from engine.runner import execute
    from engine.store import Store

    cfg = RunConfig(name="split-table-smoke")
    cfg.model.name_or_path, cfg.model.mixed_precision = "builtin:tiny-gpt2", "none"
    cfg.data.source, cfg.data.validation_size, cfg.data.holdout_size = "builtin", 0, 4
    p = cfg.ppo
    # 2 steps: the training-reward column needs a first and a last quarter
    p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps = 4, 4, 2, 2
    cfg.generation.max_new_tokens, cfg.generation.min_length = 4, 2
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.samples_per_prompt, cfg.evaluation.bootstrap_samples = 2, 50
    cfg.evaluation.relevance = False
    cfg.checkpoint.every_steps = 0
    cfg.output_dir = str(tmp / "runs")
    db = str(tmp / "store.db")
    store = Store(db)
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name)
    store.claim_run(run_id)
    execute(cfg, store, run_id, lambda p: None)
    return db, [run_id]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run ids")
    ap.add_argument("--db", help="store path or URL")
    ap.add_argument("--never-tuned", action="store_true", help="also the test prompts outside the old tuning hold-out")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    from engine.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            db, runs = smoke(Path(tmp))
        else:
            if not args.db or not args.runs:
                ap.error("--db and at least one run id are needed (or --smoke)")
            db, runs = args.db, args.runs
        store = Store(db)
        rows = [row for run_id in runs for row in run_rows(store, run_id, args.never_tuned)]
        print_table(rows, args.markdown)


if __name__ == "__main__":
    main()
