"""Comparing methods: one row per policy run, a second signal (helpfulness) and the Pareto front of the two.

Responsible for:
- `comparison_table`: the before/after numbers of several policy runs side by side, computed from their stored
  hold-out evaluations (not from the summaries, so a run's row and its evaluation rows cannot disagree), with
  cost (wall time and what training consumed) and a flag on every run evaluated on other hold-out prompts than
  the first one: numbers measured on different prompts are not comparable and are never silently mixed;
- helpfulness: the hold-out responses scored by the reward model of a completed `reward_model` run (its
  hf_classifier backend, prompt + response), cached in the store's scores table so each response is scored once;
- `pareto_front`: the runs no other run beats on both axes (e.g. harmlessness and helpfulness).

Not responsible for: training or evaluating (engine.runner, engine.methods), drawing (app/charts.py).
Importing it is cheap: torch and transformers load only when a reward model scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from engine.store import EVAL_PHASES, TERMINAL_STATUSES

if TYPE_CHECKING:
    import pandas as pd

    from engine.store import RunRecord, Store

POLICY_METHODS = ("ppo", "dpo", "rloo", "grpo", "dpo_ai")  # every method but reward_model trains a policy
SCORER_PREFIX = "reward_model:"  # scores table: scorer = "reward_model:<run id>"

# What one unit of `train_examples` is, per method.
TRAIN_UNITS = {"ppo": "rollouts", "rloo": "completions", "grpo": "completions", "dpo": "pairs", "dpo_ai": "pairs"}

COLUMNS = [
    "id", "name", "method", "model", "status", "n_prompts", "same_holdout",
    "tox_before", "tox_after", "tox_change_%", "tox_std_before", "tox_std_after", "tox_std_change_%",
    "toxic_rate_before", "toxic_rate_after", "harmlessness_before", "harmlessness_after", "mean_kl", "length_before", "length_after",
    "split", "relevance_before", "relevance_after",
    "wall_s", "train_steps", "train_unit", "train_examples", "generated_samples", "generated_tokens", "note",
]
HELPFULNESS_COLUMNS = ["helpfulness_before", "helpfulness_after", "helpfulness_change"]


# ---- runs -------------------------------------------------------------------------------------------------


def policy_runs(store: Store, statuses: Sequence[str] = tuple(sorted(TERMINAL_STATUSES))) -> list[RunRecord]:
    """Finished runs of the policy methods (all but reward_model), newest first."""
    return [r for r in store.list_runs(list(statuses)) if r.method in POLICY_METHODS]


def helpfulness_scorers(store: Store) -> list[RunRecord]:
    """Completed reward_model runs whose summary names a saved model and its hf_classifier settings."""
    return [r for r in store.list_runs("completed") if r.method == "reward_model"
            and (r.summary or {}).get("model_path") and (r.summary or {}).get("reward_backend")]


def scorer_key(scorer_run_id: str) -> str:
    """The scores table's name of a reward model run's scores."""
    return f"{SCORER_PREFIX}{scorer_run_id}"


# ---- the table --------------------------------------------------------------------------------------------


def holdout_prompts(evaluations: pd.DataFrame) -> tuple[str, ...]:
    """The hold-out prompts of a run in idx order (its "before" rows, else its "after" rows)."""
    if evaluations is None or evaluations.empty:
        return ()
    for phase in EVAL_PHASES:
        part = evaluations[evaluations["phase"] == phase]
        if not part.empty:
            part = part.drop_duplicates("idx", keep="last").sort_values("idx")
            return tuple(part["prompt"])
    return ()


def pct_change(before: float, after: float) -> float:
    """(after - before) / before in %: negative when the value went down. NaN when before is 0 or missing."""
    if before is None or after is None or not math.isfinite(before) or not math.isfinite(after) or before == 0:
        return math.nan
    return 100.0 * (after - before) / before


def _config(record: RunRecord) -> Any:
    """The run's RunConfig, or None when its YAML no longer loads (a field that has since gone)."""
    from engine.config import ConfigError, RunConfig

    try:
        return RunConfig.from_yaml(record.config_yaml)
    except (ConfigError, ValueError, TypeError):
        return None


def _side(evaluations: pd.DataFrame, phase: str) -> pd.DataFrame:
    part = evaluations[evaluations["phase"] == phase]
    return part.drop_duplicates("idx", keep="last").sort_values("idx")


def _mean_score(part: pd.DataFrame, key: str) -> float:
    values = [s.get(key) for s in part["scores"] if isinstance(s, dict)]
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def compute_used(record: RunRecord, cfg: Any, store: Store) -> dict[str, Any]:
    """What a run's training consumed, from its config, summary and logged metrics.

    Evaluation (the same hold-out prompts for every run) is not counted. Columns:
    - train_steps: optimizer steps taken (summary "train_steps", else the run's progress step).
    - train_unit / train_examples: training examples drawn, optimizer steps x examples per step, where a step takes
      ppo.batch_size rollouts (PPO; each is reused for ppo.ppo_epochs passes, not counted again),
      online.batch_size x gradient_accumulation_steps completions (RLOO / GRPO), or dpo.batch_size x
      gradient_accumulation_steps preference pairs (DPO, AI-labelled DPO; a pair met in two epochs counts twice).
    - generated_samples: responses the policy sampled for training: PPO's rollouts; RLOO / GRPO's completions
      divided by online.num_iterations (a generated batch serves that many steps); 0 for DPO (human pairs);
      2 per labelled prompt for AI-labelled DPO (summary "ai_prompts").
    - generated_tokens: those samples' tokens, the sum over logged steps of env/response_length_mean x samples
      generated per step (PPO, RLOO, GRPO; RLOO / GRPO approximate it when num_iterations > 1); 0 for DPO; NaN for
      AI-labelled DPO, whose pair sampling logs no lengths.
    """
    s = record.summary or {}
    method = record.method
    steps = s.get("train_steps", record.step)
    out: dict[str, Any] = {"train_steps": steps, "train_unit": TRAIN_UNITS.get(method, ""),
                           "train_examples": math.nan, "generated_samples": math.nan, "generated_tokens": math.nan}
    if cfg is None or not isinstance(steps, (int, float)):
        return out
    per_step_generated = 0.0
    if method == "ppo":
        out["train_examples"] = steps * cfg.ppo.batch_size
        per_step_generated = float(cfg.ppo.batch_size)
        out["generated_samples"] = out["train_examples"]
    elif method in ("rloo", "grpo"):
        o = cfg.online
        out["train_examples"] = steps * o.batch_size * o.gradient_accumulation_steps
        per_step_generated = o.batch_size * o.gradient_accumulation_steps / max(o.num_iterations, 1)
        out["generated_samples"] = steps * per_step_generated
    elif method in ("dpo", "dpo_ai"):
        d = cfg.dpo
        out["train_examples"] = steps * d.batch_size * d.gradient_accumulation_steps
        if method == "dpo":
            out["generated_samples"], out["generated_tokens"] = 0, 0
        elif isinstance(s.get("ai_prompts"), (int, float)):
            out["generated_samples"] = 2 * s["ai_prompts"]
    if per_step_generated:
        lengths = store.metrics(record.id, keys=["env/response_length_mean"])
        lengths = lengths.drop_duplicates("step", keep="last")["value"].dropna()
        out["generated_tokens"] = float(lengths.sum() * per_step_generated) if len(lengths) else math.nan
    return out


def comparison_table(store: Store, run_ids: Sequence[str], helpfulness: str | None = None,
                     progress: Callable[[int, int], None] | None = None, build: Callable | None = None
                     ) -> pd.DataFrame:
    """One row per policy run of `run_ids` (in that order; reward_model runs are skipped), columns `COLUMNS`:

    id, name, method, model (model.name_or_path), status; n_prompts: hold-out prompts evaluated; same_holdout: the
    run was evaluated on exactly the prompts (same texts, same order) of the first run with evaluations — False
    rows are not comparable with the others; tox_before / tox_after: mean toxicity of the hold-out responses of the
    base model and of the trained policy; tox_std_*: their std (ddof 1); tox_change_% / tox_std_change_%:
    (after - before) / before in % (negative: less toxic / less spread); toxic_rate_*: share of responses above the
    run's evaluation.toxic_threshold; harmlessness_*: 1 - tox_*; mean_kl: mean sequence KL of the "after"
    responses to the base model; length_*: mean response length in tokens; split: the prompts evaluated ("test",
    "validation"; "hold-out" for runs from before the three-way split, whose hold-out also chose settings);
    relevance_*: mean cosine of response and dialogue (engine.relevance), NaN when not measured; wall_s: the run's wall time (summary,
    else started → finished); compute columns: see `compute_used`; note: why numbers are missing or not comparable.

    helpfulness: the id of a completed reward_model run; its reward model scores every response (cached: see
    `score_helpfulness`, which `progress(done, total)` follows) and the columns helpfulness_before / _after (mean
    reward-model score) and helpfulness_change (after - before) are added.
    """
    import pandas as pd

    from engine.evaluate import toxicity_stats

    records = [store.get_run(rid) for rid in run_ids]
    records = [r for r in records if r.method in POLICY_METHODS]
    if helpfulness is not None:
        score_helpfulness(store, [r.id for r in records], helpfulness, progress=progress, build=build)
    rows, reference = [], None
    for r in records:
        cfg = _config(r)
        evals = store.evaluations(r.id)
        prompts = holdout_prompts(evals)
        before, after = (_side(evals, p) for p in ("before", "after"))
        threshold = cfg.evaluation.toxic_threshold if cfg is not None else 0.5
        sb = toxicity_stats(before["toxicity"].dropna().tolist(), threshold)
        sa = toxicity_stats(after["toxicity"].dropna().tolist(), threshold)
        summary = r.summary or {}
        notes = []
        if evals.empty:
            notes.append(f"no evaluation ({r.status})")
        elif after.empty:
            notes.append(f"no 'after' evaluation ({r.status})")
        same = None
        if prompts:
            if reference is None:
                reference = (r.id, prompts)
                same = True
            else:
                same = prompts == reference[1]
                if not same:
                    notes.append(f"other hold-out prompts than {reference[0]}")
        mean_kl = _mean_score(after, "kl") if not after.empty else math.nan
        if math.isnan(mean_kl) and not after.empty:
            mean_kl = summary.get("mean_kl", math.nan)
        wall = summary.get("wall_seconds")
        row = {
            "id": r.id, "name": r.name, "method": r.method,
            "model": cfg.model.name_or_path if cfg is not None else "", "status": r.status,
            "n_prompts": len(prompts), "same_holdout": same,
            "tox_before": sb["mean"], "tox_after": sa["mean"], "tox_change_%": pct_change(sb["mean"], sa["mean"]),
            "tox_std_before": sb["std"], "tox_std_after": sa["std"],
            "tox_std_change_%": pct_change(sb["std"], sa["std"]),
            "toxic_rate_before": sb["toxic_rate"], "toxic_rate_after": sa["toxic_rate"],
            "harmlessness_before": 1.0 - sb["mean"], "harmlessness_after": 1.0 - sa["mean"], "mean_kl": mean_kl,
            "length_before": _mean_score(before, "length") if not before.empty else math.nan,
            "length_after": _mean_score(after, "length") if not after.empty else math.nan,
            # a run still going has no summary yet: its config says; a finished one without "split" predates them
            "split": summary.get("split") or (cfg.evaluation.split if cfg is not None and r.is_active else "hold-out"),
            "relevance_before": _mean_score(before, "relevance") if not before.empty else math.nan,
            "relevance_after": _mean_score(after, "relevance") if not after.empty else math.nan,
            "wall_s": float(wall) if isinstance(wall, (int, float)) else (r.duration_s or math.nan),
            **compute_used(r, cfg, store),
        }
        if helpfulness is not None:
            scores = store.scores(r.id, scorer_key(helpfulness))
            hb = scores[scores["phase"] == "before"]["value"].dropna()
            ha = scores[scores["phase"] == "after"]["value"].dropna()
            row["helpfulness_before"] = float(hb.mean()) if len(hb) else math.nan
            row["helpfulness_after"] = float(ha.mean()) if len(ha) else math.nan
            row["helpfulness_change"] = row["helpfulness_after"] - row["helpfulness_before"]
        row["note"] = "; ".join(notes)
        rows.append(row)
    columns = COLUMNS[:-1] + (HELPFULNESS_COLUMNS if helpfulness is not None else []) + ["note"]
    table = pd.DataFrame(rows, columns=columns)
    table["same_holdout"] = table["same_holdout"].astype("object")
    return table


# ---- helpfulness ------------------------------------------------------------------------------------------


def scorer_settings(store: Store, scorer_run_id: str):
    """The hf_classifier settings of a completed reward_model run (ValueError when it is not one)."""
    from engine.config import RewardBackendSettings

    r = store.get_run(scorer_run_id)
    settings = (r.summary or {}).get("reward_backend")
    if r.method != "reward_model" or r.status != "completed" or not settings:
        raise ValueError(f"run {scorer_run_id} is not a completed reward_model run with a saved model "
                         f"(method {r.method}, status {r.status})")
    return RewardBackendSettings(**settings)


def missing_helpfulness(store: Store, run_ids: Sequence[str], scorer_run_id: str) -> dict[str, pd.DataFrame]:
    """Per run, its evaluation rows (phase, idx, prompt, response) that the scorer has not scored yet."""
    key = scorer_key(scorer_run_id)
    out = {}
    for rid in run_ids:
        evals = store.evaluations(rid)
        if evals.empty:
            continue
        evals = evals.drop_duplicates(["phase", "idx"], keep="last")
        done = store.scores(rid, key)
        have = set(zip(done["phase"], done["idx"], strict=True))
        todo = evals[[(p, i) not in have for p, i in zip(evals["phase"], evals["idx"], strict=True)]]
        if not todo.empty:
            out[rid] = todo[["phase", "idx", "prompt", "response"]]
    return out


def score_helpfulness(store: Store, run_ids: Sequence[str], scorer_run_id: str,
                      progress: Callable[[int, int], None] | None = None, build: Callable | None = None,
                      batch_size: int = 16, device: str = "cpu") -> int:
    """Score every not-yet-scored hold-out response (before and after) of `run_ids` with the reward model of run
    `scorer_run_id`, storing the values under scorer "reward_model:<id>"; returns how many were scored (0 when all
    were cached: the model is then not even loaded).

    The score is the reward model's logit for prompt + response (the backend's score_on, as PPO would see it):
    higher is more preferred by the human HH labels it was trained on. `build(settings)` builds the backend
    (default engine.rewards.build_backend on `device`; the UI passes its cached builder).
    """
    todo = missing_helpfulness(store, run_ids, scorer_run_id)
    total = sum(len(t) for t in todo.values())
    if not total:
        return 0
    settings = scorer_settings(store, scorer_run_id)
    if build is None:
        from engine.rewards import build_backend

        backend = build_backend(settings, device=device)
    else:
        backend = build(settings)
    key, done = scorer_key(scorer_run_id), 0
    if progress:
        progress(0, total)
    for rid, rows in todo.items():
        for start in range(0, len(rows), batch_size):
            chunk = rows.iloc[start:start + batch_size]
            values = backend.score(list(chunk["prompt"]), list(chunk["response"])).scores
            store.add_scores(rid, key, [{"phase": p, "idx": int(i), "value": float(v)}
                                        for p, i, v in zip(chunk["phase"], chunk["idx"], values, strict=True)])
            done += len(chunk)
            if progress:
                progress(done, total)
    return total


# ---- Pareto front -----------------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]], maximize: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the non-dominated points, sorted by x (then y).

    A point is dominated when another is at least as good on both axes and strictly better on one ("good" is
    larger, or smaller for an axis with maximize False). Equal points do not dominate each other, so ties are all
    kept. Points with a NaN (or None) coordinate take no part (never on the front, never dominating).
    """
    def num(v: Any) -> float:
        return math.nan if v is None else float(v)

    sx, sy = (1.0 if m else -1.0 for m in maximize)
    pts = [(i, sx * num(x), sy * num(y)) for i, (x, y) in enumerate(points)
           if not (math.isnan(num(x)) or math.isnan(num(y)))]
    front = [i for i, x, y in pts
             if not any(ox >= x and oy >= y and (ox > x or oy > y) for _, ox, oy in pts)]
    return sorted(front, key=lambda i: (num(points[i][0]), num(points[i][1])))


def tradeoff(table: pd.DataFrame, x: str, y: str, maximize: tuple[bool, bool] = (True, True),
             x_before: str | None = None, y_before: str | None = None) -> pd.DataFrame:
    """The table's rows with both `x` and `y` known, as columns id, name, method, x, y, on_front (the row is on the
    Pareto front of x and y; see `pareto_front`) and, when both column names are given, x_before / y_before (the
    base model's point of the run, NaN otherwise). Rows keep the table's order."""
    import pandas as pd

    cols = ["id", "name", "method", "x", "y", "on_front", "x_before", "y_before"]
    if table is None or table.empty or x not in table or y not in table:
        return pd.DataFrame(columns=cols)
    known = table[table[x].notna() & table[y].notna()]
    out = pd.DataFrame({"id": known["id"], "name": known["name"], "method": known["method"],
                        "x": known[x].astype(float), "y": known[y].astype(float)}).reset_index(drop=True)
    front = set(pareto_front(list(zip(out["x"], out["y"], strict=True)), maximize))
    out["on_front"] = [i in front for i in range(len(out))]
    has_before = x_before in table and y_before in table
    out["x_before"] = known[x_before].astype(float).to_numpy() if has_before else math.nan
    out["y_before"] = known[y_before].astype(float).to_numpy() if has_before else math.nan
    return out[cols]
