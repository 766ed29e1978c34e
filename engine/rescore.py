"""Scores added to a finished run afterwards, from its stored responses: `python -m engine rescore RUN`.

Responsible for: the relevance check (engine.relevance) of a run evaluated where the MiniLM encoder was missing
(a GPU box without the package, or `evaluation.relevance: false`): each before/after row's `scores["relevance"]` and
the summary's relevance numbers, computed exactly as a run computes them (the same scorer, the dialogue cut out of
the prompt by the run's template, the same paired bootstrap over whole prompts with the run's evaluation settings).

Not responsible for: toxicity (the evaluator's scores are the run's own and are never rewritten), or runs without
both sides evaluated.
"""

from __future__ import annotations

from typing import Any


class RescoreError(ValueError):
    """The run cannot be rescored (not finished, no evaluations, sides that do not match); the message says why."""


def add_relevance(store, run_id: str, scorer=None) -> dict[str, Any]:
    """Score the run's stored before/after responses for relevance, store each row's score and the summary's
    relevance numbers, and return the new summary. `scorer`: an engine.relevance.RelevanceScorer (default: MiniLM)."""
    from engine.config import RunConfig
    from engine.evaluate import relevance_summary
    from engine.relevance import default_scorer, dialogue_of

    run = store.get_run(run_id)
    if run.status != "completed" or not (run.summary or {}).get("before"):
        raise RescoreError(f"run {run.id} is {run.status} without a before/after summary: only a completed, evaluated "
                           "run can be rescored")
    cfg = RunConfig.from_yaml(run.config_yaml)
    rows = store.evaluations(run.id)
    before, after = rows[rows["phase"] == "before"], rows[rows["phase"] == "after"]
    if before.empty or len(before) != len(after):
        raise RescoreError(f"run {run.id} has {len(before)} before and {len(after)} after responses stored: relevance "
                           "compares the two sides response by response")
    scorer = scorer or default_scorer()
    sims = scorer.score(list(rows["response"]), [dialogue_of(p, cfg.data.template) for p in rows["prompt"]])
    updates, values = {}, {"before": [], "after": []}
    for (eid, phase, scores), sim in zip(rows[["id", "phase", "scores"]].itertuples(index=False), sims, strict=True):
        updates[int(eid)] = {**scores, "relevance": float(sim)}
        values[phase].append(float(sim))
    store.set_evaluation_scores(run.id, updates)
    ev = cfg.evaluation
    summary = {k: v for k, v in run.summary.items() if k != "relevance_error"}
    summary.update(relevance_summary(values["before"], values["after"], bootstrap_samples=ev.bootstrap_samples,
                                     seed=ev.seed, samples_per_prompt=ev.samples_per_prompt))
    store.set_summary(run.id, summary)
    return summary
