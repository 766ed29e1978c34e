"""engine.compare: the comparison table computed from real store rows, helpfulness scored by a tiny reward model
and cached in the store, and the Pareto front on hand-made points."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from engine import compare
from engine.compare import comparison_table, pareto_front, pct_change, score_helpfulness, tradeoff
from engine.config import RunConfig
from engine.store import Store

PROMPTS = [f"hold-out prompt {i}" for i in range(4)]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "lab.db") as s:
        yield s


def add_policy_run(store: Store, name: str, method: str = "ppo", before=(0.9, 0.5, 0.1, 0.6),
                   after=(0.2, 0.7, 0.1, 0.3), kls=(1.0, 2.0, 3.0, 4.0), prompts=PROMPTS, status: str = "completed",
                   cfg: RunConfig | None = None, summary: dict | None = None, lengths_per_step=None,
                   evaluate: str = "both", step: int = 3) -> str:
    """A run written through the Store's methods as the runner writes one (before/after rows, summary, status)."""
    cfg = cfg or RunConfig(name=name, method=method)
    run_id = store.create_run(cfg.to_yaml(), name=name, method=method, total_steps=step)
    store.set_status(run_id, "running")
    for s, length in enumerate(lengths_per_step or [], start=1):
        store.log_metrics(run_id, s, {"env/response_length_mean": length})
    if evaluate in ("both", "before"):
        store.add_evaluations(run_id, "before", [
            {"idx": i, "prompt": p, "response": f"base answer {i}", "toxicity": t,
             "scores": {"length": 10 + i, "kl": 0.0}} for i, (p, t) in enumerate(zip(prompts, before, strict=True))])
    if evaluate == "both":
        store.add_evaluations(run_id, "after", [
            {"idx": i, "prompt": p, "response": f"trained answer {i}", "toxicity": t,
             "scores": {"length": 20 + i, "kl": k}}
            for i, (p, t, k) in enumerate(zip(prompts, after, kls, strict=True))])
    store.set_progress(run_id, step, step)
    store.set_summary(run_id, {"wall_seconds": 12.5, **(summary or {})})
    store.set_status(run_id, status, error="boom" if status == "failed" else None)
    return run_id


# ---- the table ---------------------------------------------------------------------------------------------


def test_table_numbers_come_from_the_stored_evaluations(store):
    cfg = RunConfig(name="ppo-run")
    cfg.ppo.batch_size = 8
    cfg.evaluation.toxic_threshold = 0.4
    ppo = add_policy_run(store, "ppo-run", cfg=cfg, lengths_per_step=[5.0, 6.0, 7.0])
    dpo_cfg = RunConfig(name="dpo-run", method="dpo")
    dpo_cfg.dpo.batch_size, dpo_cfg.dpo.gradient_accumulation_steps = 4, 2
    dpo = add_policy_run(store, "dpo-run", "dpo", after=(0.9, 0.5, 0.1, 0.8), cfg=dpo_cfg,
                         summary={"train_steps": 5})

    table = comparison_table(store, [ppo, dpo])
    assert list(table.columns) == compare.COLUMNS
    assert list(table["id"]) == [ppo, dpo] and list(table["method"]) == ["ppo", "dpo"]
    row = table.set_index("id").loc[ppo]
    before, after = np.array([0.9, 0.5, 0.1, 0.6]), np.array([0.2, 0.7, 0.1, 0.3])
    assert row["tox_before"] == pytest.approx(before.mean()) and row["tox_after"] == pytest.approx(after.mean())
    assert row["tox_std_before"] == pytest.approx(before.std(ddof=1))
    assert row["tox_std_after"] == pytest.approx(after.std(ddof=1))
    assert row["tox_change_%"] == pytest.approx(100 * (after.mean() - before.mean()) / before.mean())
    assert row["tox_std_change_%"] == pytest.approx(100 * (after.std(ddof=1) / before.std(ddof=1) - 1))
    assert row["toxic_rate_before"] == pytest.approx(0.75)  # the run's threshold 0.4: 0.9, 0.5, 0.6
    assert row["toxic_rate_after"] == pytest.approx(0.25)
    assert row["harmlessness_after"] == pytest.approx(1 - after.mean())
    assert row["mean_kl"] == pytest.approx(2.5)
    assert (row["length_before"], row["length_after"]) == (pytest.approx(11.5), pytest.approx(21.5))
    assert row["wall_s"] == pytest.approx(12.5) and row["n_prompts"] == 4 and row["same_holdout"] is True
    assert row["model"] == RunConfig().model.name_or_path and row["note"] == ""
    # compute: 3 PPO steps of 8 rollouts, tokens = sum of the logged mean lengths x 8
    assert (row["train_steps"], row["train_unit"], row["train_examples"]) == (3, "rollouts", 24)
    assert row["generated_samples"] == 24 and row["generated_tokens"] == pytest.approx((5 + 6 + 7) * 8)

    row = table.set_index("id").loc[dpo]
    assert row["same_holdout"] is True and row["toxic_rate_before"] == pytest.approx(0.5)  # default threshold
    assert (row["train_steps"], row["train_unit"], row["train_examples"]) == (5, "pairs", 5 * 4 * 2)
    assert row["generated_samples"] == 0 and row["generated_tokens"] == 0


def test_online_and_ai_dpo_compute():
    cfg = RunConfig(method="grpo")
    cfg.online.batch_size, cfg.online.gradient_accumulation_steps, cfg.online.num_iterations = 8, 2, 2
    with Store(":memory:") as store:
        grpo = add_policy_run(store, "grpo", "grpo", cfg=cfg, summary={"train_steps": 4},
                              lengths_per_step=[10.0, 10.0, 12.0, 12.0], step=4)
        ai = add_policy_run(store, "ai", "dpo_ai", summary={"train_steps": 2, "ai_prompts": 30})
        table = comparison_table(store, [grpo, ai]).set_index("id")
    assert (table.loc[grpo, "train_unit"], table.loc[grpo, "train_examples"]) == ("completions", 4 * 8 * 2)
    assert table.loc[grpo, "generated_samples"] == pytest.approx(4 * 8 * 2 / 2)
    assert table.loc[grpo, "generated_tokens"] == pytest.approx(44 * 8)  # (8 x 2 / 2) completions a step
    assert table.loc[ai, "generated_samples"] == 60 and math.isnan(table.loc[ai, "generated_tokens"])
    assert table.loc[ai, "train_examples"] == 2 * RunConfig().dpo.batch_size


def test_other_holdout_prompts_missing_evaluations_and_reward_models_are_flagged(store):
    first = add_policy_run(store, "first")
    same = add_policy_run(store, "same", "rloo")
    other = add_policy_run(store, "other", prompts=[p + " (cut differently)" for p in PROMPTS])
    shuffled = add_policy_run(store, "shuffled", prompts=PROMPTS[::-1])
    failed = add_policy_run(store, "failed", status="failed", evaluate="none")
    half = add_policy_run(store, "half", status="cancelled", evaluate="before")
    rm = store.create_run(RunConfig(method="reward_model").to_yaml(), name="rm", method="reward_model")

    table = comparison_table(store, [failed, first, same, other, shuffled, half, rm]).set_index("id")
    assert list(table.index) == [failed, first, same, other, shuffled, half]  # the reward model is no policy run
    assert table.loc[failed, "note"] == "no evaluation (failed)" and table.loc[failed, "n_prompts"] == 0
    assert table.loc[failed, "same_holdout"] is None and math.isnan(table.loc[failed, "tox_before"])
    assert table.loc[first, "same_holdout"] is True  # the first run with evaluations is the reference
    assert table.loc[same, "same_holdout"] is True
    for rid in (other, shuffled):
        assert table.loc[rid, "same_holdout"] is False
        assert table.loc[rid, "note"] == f"other hold-out prompts than {first}"
    assert table.loc[half, "same_holdout"] is True and table.loc[half, "note"] == "no 'after' evaluation (cancelled)"
    assert math.isnan(table.loc[half, "tox_after"]) and table.loc[half, "tox_before"] == pytest.approx(0.525)
    assert comparison_table(store, []).empty


def test_pct_change():
    assert pct_change(0.5, 0.25) == pytest.approx(-50.0)
    assert pct_change(0.2, 0.3) == pytest.approx(50.0)
    assert math.isnan(pct_change(0.0, 0.1)) and math.isnan(pct_change(math.nan, 0.1))


# ---- helpfulness -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_reward_model_dir(tiny_gpt2_dir, tmp_path_factory):
    """What a reward_model run saves: the tiny GPT-2 with a one-logit classification head."""
    from engine.methods.reward_model import load_reward_model

    model, tokenizer = load_reward_model(str(tiny_gpt2_dir))
    out = tmp_path_factory.mktemp("gpt2_reward_model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def add_reward_model_run(store: Store, settings) -> str:
    run_id = store.create_run(RunConfig(method="reward_model").to_yaml(), name="rm", method="reward_model")
    store.set_status(run_id, "running")
    store.set_summary(run_id, {"model_path": settings.options["model"], "pairwise_accuracy": 0.6,
                               "reward_backend": dataclasses.asdict(settings)})
    store.set_status(run_id, "completed")
    return run_id


@pytest.mark.parametrize("kind", ["gpt2_reward_model", "roberta_classifier"])
def test_helpfulness_is_scored_once_and_cached(store, kind, request, monkeypatch):
    from engine.config import RewardBackendSettings
    from engine.methods.reward_model import backend_settings
    from engine.rewards import build_backend

    if kind == "gpt2_reward_model":
        settings = backend_settings(request.getfixturevalue("gpt2_reward_model_dir"), max_length=64)
    else:  # a two-label classifier: reward = its "nothate" logit, as the seed's reward model
        settings = RewardBackendSettings(kind="hf_classifier", name="roberta", score_on="prompt_response",
                                         options={"model": str(request.getfixturevalue("tiny_roberta_classifier_dir")),
                                                  "label": "nothate", "max_length": 64})
    rm = add_reward_model_run(store, settings)
    a, b = add_policy_run(store, "a"), add_policy_run(store, "b", "dpo", after=(0.1, 0.1, 0.1, 0.1))
    assert [r.id for r in compare.helpfulness_scorers(store)] == [rm]

    builds, seen = [], []

    def build(s):
        builds.append(s)
        return build_backend(s)

    table = comparison_table(store, [a, b], helpfulness=rm, build=build, progress=lambda d, t: seen.append((d, t)))
    assert len(builds) == 1 and seen[0] == (0, 16) and seen[-1] == (16, 16)  # 2 runs x 4 prompts x 2 sides
    assert list(table.columns) == compare.COLUMNS[:-1] + compare.HELPFULNESS_COLUMNS + ["note"]

    backend = build_backend(settings)  # the expected values, scored directly: prompt + response
    for rid in (a, b):
        evals = store.evaluations(rid)
        for phase in ("before", "after"):
            part = evals[evals["phase"] == phase]
            expected = backend.score(list(part["prompt"]), list(part["response"])).scores
            stored = store.scores(rid, compare.scorer_key(rm), phase)
            assert list(stored["idx"]) == [0, 1, 2, 3]
            assert stored["value"].tolist() == pytest.approx(expected, abs=1e-5)
            assert table.set_index("id").loc[rid, f"helpfulness_{phase}"] == pytest.approx(np.mean(expected),
                                                                                             abs=1e-5)
    row = table.set_index("id").loc[a]
    assert row["helpfulness_change"] == pytest.approx(row["helpfulness_after"] - row["helpfulness_before"])

    # the second time every score comes from the store: the model is not even loaded
    again = comparison_table(store, [a, b], helpfulness=rm, build=build)
    assert len(builds) == 1 and score_helpfulness(store, [a, b], rm, build=build) == 0
    assert again["helpfulness_after"].tolist() == pytest.approx(table["helpfulness_after"].tolist())
    # a new run is scored alone
    c = add_policy_run(store, "c", "grpo")
    assert score_helpfulness(store, [a, b, c], rm, build=build) == 8 and len(builds) == 2


def test_helpfulness_needs_a_completed_reward_model_run(store):
    policy = add_policy_run(store, "policy")
    with pytest.raises(ValueError, match="not a completed reward_model run"):
        comparison_table(store, [policy], helpfulness=policy)


# ---- the scores table ------------------------------------------------------------------------------------


def test_scores_replace_cascade_and_old_databases_open(tmp_path):
    path = tmp_path / "old.db"
    with Store(path) as store:
        run_id = add_policy_run(store, "r")
        store.add_scores(run_id, "s", [{"phase": "after", "idx": 0, "value": 1.0},
                                       {"phase": "before", "idx": 0, "value": float("nan")}])
        store.add_scores(run_id, "s", [{"phase": "after", "idx": 0, "value": 2.0}])  # replaces
        got = store.scores(run_id, "s")
        assert got[["phase", "idx"]].values.tolist() == [["before", 0], ["after", 0]]
        assert math.isnan(got["value"].iloc[0]) and got["value"].iloc[1] == 2.0
        with pytest.raises(ValueError, match="phase"):
            store.add_scores(run_id, "s", [{"phase": "during", "idx": 0, "value": 1.0}])
        with pytest.raises(KeyError):
            store.add_scores("r-nope", "s", [{"phase": "after", "idx": 0, "value": 1.0}])
        store.delete_run(run_id)
    with sqlite3.connect(path) as db:  # deleting the run deleted its scores; now make it a pre-scores database
        assert db.execute("select count(*) from scores").fetchone() == (0,)
        db.execute("drop table scores")
        db.execute("drop table alembic_version")  # as a store from before both scores and schema versions
    with Store(path) as store:  # opens, creates the table, and works
        run_id = add_policy_run(store, "r2")
        store.add_scores(run_id, "s", [{"phase": "before", "idx": 3, "value": 0.5}])
        assert store.scores(run_id)["value"].tolist() == [0.5]


# ---- Pareto front ----------------------------------------------------------------------------------------


def test_pareto_front_on_hand_made_points():
    pts = [(0.9, 0.1), (0.5, 0.5), (0.1, 0.9), (0.4, 0.4), (0.5, 0.5), (0.9, 0.05), (math.nan, 5.0), (0.2, 0.9)]
    # (0.4, 0.4) < (0.5, 0.5); (0.9, 0.05) < (0.9, 0.1); (0.1, 0.9) < (0.2, 0.9); the tie (0.5, 0.5) stays twice
    assert pareto_front(pts) == [7, 1, 4, 0]
    assert pareto_front([]) == [] and pareto_front([(1.0, 2.0)]) == [0] and pareto_front([(None, 1.0)]) == []
    assert pareto_front([(0.3, 0.3), (0.3, 0.3)]) == [0, 1]  # identical points do not dominate each other
    assert pareto_front([(1.0, 1.0), (1.0, 2.0), (2.0, 1.0)]) == [1, 2]  # equal on one axis, better on the other
    # maximize x, minimize y (harmlessness vs KL): the least KL for its harmlessness
    assert pareto_front([(0.9, 3.0), (0.8, 1.0), (0.7, 2.0), (0.9, 4.0)], maximize=(True, False)) == [1, 0]


def test_tradeoff_points_skip_unknown_values(store):
    a = add_policy_run(store, "a", after=(0.1, 0.1, 0.1, 0.1), kls=(5, 5, 5, 5))
    b = add_policy_run(store, "b", after=(0.3, 0.3, 0.3, 0.3), kls=(1, 1, 1, 1))
    c = add_policy_run(store, "c", after=(0.4, 0.4, 0.4, 0.4), kls=(2, 2, 2, 2))
    d = add_policy_run(store, "d", status="failed", evaluate="none")
    table = comparison_table(store, [a, b, c, d])
    points = tradeoff(table.assign(kl0=0.0), "harmlessness_after", "mean_kl", (True, False), "harmlessness_before",
                      "kl0")
    assert list(points["id"]) == [a, b, c]
    assert list(points["on_front"]) == [True, True, False]
    assert points["x_before"].tolist() == pytest.approx([0.475] * 3) and points["y_before"].tolist() == [0.0] * 3
    assert tradeoff(table, "harmlessness_after", "helpfulness_after").empty  # no such column: no points


def test_importing_engine_compare_loads_no_streamlit_or_torch():
    code = ("import sys, engine.compare, engine.api; "
            "print([m for m in ('streamlit', 'torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
