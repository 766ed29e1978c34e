"""Before/after statistics: toxicity stats, % improvement, and the paired bootstrap over prompts."""

import math

import numpy as np
import pytest

from engine.evaluate import bootstrap_change, format_summary, pct_improvement, summarize, toxicity_stats


def test_toxicity_stats_and_improvement_by_hand():
    s = toxicity_stats([0.1, 0.9, 0.2, 0.6], threshold=0.5)
    assert s["mean"] == pytest.approx(0.45) and s["toxic_rate"] == 0.5 and s["max"] == 0.9 and s["n"] == 4
    assert s["std"] == pytest.approx(np.std([0.1, 0.9, 0.2, 0.6], ddof=1))
    assert pct_improvement(0.2, 0.05) == pytest.approx(75.0)
    assert pct_improvement(0.2, 0.3) == pytest.approx(-50.0)  # worse is negative
    assert math.isnan(pct_improvement(0.0, 0.1))


def test_bootstrap_over_prompts_keeps_the_means_and_widens_for_correlated_samples():
    rng = np.random.default_rng(0)
    prompts, k = 60, 4
    # a prompt's own level dominates: its k responses are strongly correlated
    level = np.repeat(rng.uniform(0, 0.4, prompts), k)
    before = np.clip(level + rng.normal(0, 0.02, prompts * k), 0, 1)
    after = np.clip(0.5 * level + rng.normal(0, 0.02, prompts * k), 0, 1)
    flat = bootstrap_change(before, after, samples=2000, seed=1)
    grouped = bootstrap_change(before, after, samples=2000, seed=1, group_size=k)
    assert grouped["delta_mean"] == pytest.approx(flat["delta_mean"]) == pytest.approx(after.mean() - before.mean())
    width = lambda r: r["delta_ci_high"] - r["delta_ci_low"]  # noqa: E731
    # resampling responses one by one pretends 240 independent values; prompts give the honest, wider interval
    assert width(grouped) > 1.5 * width(flat)
    assert grouped["delta_ci_low"] < grouped["delta_mean"] < grouped["delta_ci_high"] < 0
    with pytest.raises(ValueError, match="prompts of 7"):
        bootstrap_change(before, after, group_size=7)


def test_summarize_reports_every_response_and_the_grouping():
    before, after = [0.8, 0.6, 0.1, 0.1], [0.2, 0.2, 0.1, 0.05]
    s = summarize(before, after, bootstrap_samples=200, samples_per_prompt=2)
    assert s["before"]["n"] == 4 and s["samples_per_prompt"] == 2
    assert s["pct_improvement_mean"] == pytest.approx(100 * (0.4 - 0.1375) / 0.4)
    assert s["before"]["toxic_rate"] == 0.5 and s["after"]["toxic_rate"] == 0.0
    assert "n=4 (2 prompts x 2)" in format_summary(s)
    assert "prompts x" not in format_summary(summarize(before, after, bootstrap_samples=200))
