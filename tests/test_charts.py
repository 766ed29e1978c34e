"""app/charts.py: metric shaping, EMA, downsampling and the figures, as pure functions (no Streamlit run)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app import charts


def long_frame(steps: int, keys: list[str], seed: int = 0, t0: float = 1_000.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    step = np.repeat(np.arange(1, steps + 1), len(keys))
    return pd.DataFrame({"id": np.arange(len(step)) + 1, "step": step, "key": np.tile(keys, steps),
                         "value": rng.normal(size=len(step)), "time": t0 + 2.0 * step})


def test_to_wide_pivots_keeps_last_duplicate_and_adds_elapsed_time():
    long = pd.DataFrame({"id": [1, 2, 3, 4, 5], "step": [1, 1, 2, 2, 2], "key": ["a", "b", "a", "a", "b"],
                         "value": [1.0, 2.0, 3.0, 4.0, np.nan], "time": [10.0, 10.0, 13.0, 13.5, 13.0]})
    wide = charts.to_wide(long)
    assert list(wide.index) == [1, 2]
    assert wide.loc[2, "a"] == 4.0  # logged twice at step 2: the last one counts
    assert math.isnan(wide.loc[2, "b"])
    assert list(wide[charts.TIME_COL]) == [0.0, 3.0]
    empty = charts.to_wide(pd.DataFrame(columns=["id", "step", "key", "value", "time"]))
    assert empty.empty and charts.TIME_COL in empty.columns


def test_ema_matches_the_bias_corrected_recursion_and_skips_nans():
    y = np.array([1.0, 2.0, np.nan, 4.0])
    out = charts.ema(y, 0.5)
    # acc = .5*acc + .5*x; norm = .5*norm + .5
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx((0.25 + 1.0) / 0.75)
    assert math.isnan(out[2])
    assert out[3] == pytest.approx((0.5 * 1.25 + 2.0) / (0.5 * 0.75 + 0.5))
    assert np.allclose(charts.ema(np.full(50, 3.0), 0.99), 3.0)  # no warm-up bias toward 0
    assert np.array_equal(charts.ema(y[:2], 0.0), y[:2])
    with pytest.raises(ValueError, match="smoothing weight"):
        charts.ema(y, 1.0)
    # the vectorised filter equals the plain recursion on a long series with gaps
    z = np.random.default_rng(3).normal(size=3000)
    z[::7] = np.nan
    acc = norm = 0.0
    expected = np.full_like(z, np.nan)
    for i, v in enumerate(z):
        if not np.isnan(v):
            acc, norm = 0.95 * acc + 0.05 * v, 0.95 * norm + 0.05
            expected[i] = acc / norm
    assert np.allclose(charts.ema(z, 0.95), expected, equal_nan=True)


def test_downsample_keeps_extremes_ends_and_gaps():
    assert np.array_equal(charts.downsample_indices(np.arange(10.0), 2000), np.arange(10))
    rng = np.random.default_rng(1)
    y = rng.normal(size=20_000)
    y[12_345] = 50.0  # a one-step spike
    y[777] = -50.0
    y[5_000:5_100] = np.nan  # a gap bigger than a bucket
    idx = charts.downsample_indices(y, 2000)
    assert len(idx) <= 2000 and len(idx) > 1500
    assert idx[0] == 0 and idx[-1] == len(y) - 1
    assert np.all(np.diff(idx) > 0)
    assert 12_345 in idx and 777 in idx
    assert np.isnan(y[idx]).any()  # the gap survives
    with pytest.raises(ValueError):
        charts.downsample_indices(y, 3)


def test_kl_panel_has_kl_on_the_left_and_its_coefficient_on_the_right():
    wide = charts.to_wide(long_frame(10, ["objective/kl", "objective/kl_coef"]))
    fig = charts.panel_figure(wide, charts.PANELS[0])
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"objective/kl", "objective/kl_coef"}
    assert by_name["objective/kl"].yaxis == "y" and by_name["objective/kl_coef"].yaxis == "y2"
    assert list(by_name["objective/kl"].x) == list(range(1, 11))
    assert np.allclose(by_name["objective/kl"].y, wide["objective/kl"])


def test_reward_panel_band_and_one_line_per_backend_and_time_axis():
    keys = ["env/reward_mean", "env/reward_std", "env/reward/profanity", "env/reward/jigsaw", "env/reward/jigsaw/p_toxic"]
    wide = charts.to_wide(long_frame(6, keys))
    panel = next(p for p in charts.PANELS if p.name == "reward")
    fig = charts.panel_figure(wide, panel, x="time")
    names = [t.name for t in fig.data]
    # one line per backend; a backend's sub-signals (probabilities) are not rewards and stay out
    assert names == ["env/reward_mean ± std", "env/reward_mean", "env/reward/jigsaw", "env/reward/profanity"]
    band = fig.data[0]
    mean, std = wide["env/reward_mean"].to_numpy(), wide["env/reward_std"].to_numpy()
    assert np.allclose(band.y[:6], mean + std) and np.allclose(band.y[6:], (mean - std)[::-1])
    assert list(fig.data[1].x) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]  # seconds since the first row
    assert fig.layout.xaxis.title.text == "wall time since the first step (s)"
    with pytest.raises(ValueError, match="x must be"):
        charts.panel_figure(wide, panel, x="epoch")


def test_smoothing_adds_faint_raw_lines_and_empty_panels_say_so():
    wide = charts.to_wide(long_frame(30, ["objective/entropy"]))
    panel = next(p for p in charts.PANELS if p.name == "entropy")
    fig = charts.panel_figure(wide, panel, smoothing=0.9)
    raw, smooth = fig.data
    assert raw.opacity == 0.25 and not raw.showlegend
    assert np.allclose(smooth.y, charts.ema(wide["objective/entropy"].to_numpy(), 0.9))
    assert np.std(np.diff(smooth.y)) < np.std(np.diff(raw.y))
    empty = charts.panel_figure(charts.to_wide(long_frame(3, ["other"])), panel)
    assert not empty.data and empty.layout.annotations[0].text == "no data yet"


def test_big_run_figures_are_downsampled_to_about_2000_points_per_series():
    keys = [k for p in charts.PANELS for k in p.lines + p.secondary] + [
        "env/reward_mean", "env/reward_std", "env/reward/a", "env/reward/b"]
    keys += [f"extra/{i}" for i in range(20 - len(keys))]
    wide = charts.to_wide(long_frame(20_000, keys))
    figs = charts.run_figures(wide, smoothing=0.6)
    assert set(figs) == {p.name for p in charts.PANELS}
    for fig in figs.values():
        for trace in fig.data:
            limit = 2 * charts.MAX_POINTS if trace.fill == "toself" else charts.MAX_POINTS
            assert 0 < len(trace.x) <= limit
    kl = [t for t in figs["kl"].data if t.name == "objective/kl" and t.showlegend is not False][0]
    assert kl.x[0] == 1 and kl.x[-1] == 20_000


def test_overlay_summaries_and_histogram():
    a = charts.to_wide(long_frame(5, ["objective/kl"], seed=1))
    b = charts.to_wide(long_frame(8, ["objective/kl"], seed=2))
    c = charts.to_wide(long_frame(8, ["other"]))
    fig = charts.overlay_figure({"run a": a, "run b": b, "run c": c}, "objective/kl")
    assert [t.name for t in fig.data] == ["run a", "run b"] and len(fig.data[1].x) == 8
    s = {"before": {"mean": 0.5}, "after": {"mean": 0.3}, "delta_ci_low": -0.3, "delta_ci_high": -0.1}
    bars = charts.compare_summaries_figure({"x": s, "no summary": {}})
    before, after = bars.data
    assert list(before.x) == ["x"] and list(after.y) == [0.3]
    assert after.error_y.array[0] == pytest.approx(0.1) and after.error_y.arrayminus[0] == pytest.approx(0.1)
    table = pd.DataFrame({"toxicity_before": [0.1, 0.9], "toxicity_after": [0.1, np.nan]})
    hist = charts.toxicity_histogram(table)
    assert [t.name for t in hist.data] == ["before", "after"] and len(hist.data[1].x) == 1


def test_comparison_bars_and_tradeoff_scatter():
    table = pd.DataFrame({"id": ["r1", "r2", "r3"], "name": ["ppo run", "r2", "broken"],
                          "method": ["ppo", "dpo", "ppo"], "tox_before": [0.5, 0.5, np.nan],
                          "tox_after": [0.25, 0.4, np.nan], "tox_change_%": [-50.0, -20.0, np.nan]})
    bars = charts.comparison_bars(table)
    before, after = bars.data
    assert list(before.x) == ["ppo run (r1)<br>ppo", "r2<br>dpo"]  # no bars for a run without numbers
    assert list(after.y) == [0.25, 0.4] and list(after.text) == ["-50 %", "-20 %"]
    assert "no evaluated runs" in charts.comparison_bars(table.iloc[:0]).layout.annotations[0].text

    points = pd.DataFrame({"id": ["r1", "r2", "r3"], "name": ["a", "b", "c"], "method": ["ppo", "dpo", "ppo"],
                           "x": [0.9, 0.6, 0.5], "y": [0.1, 0.8, 0.05], "on_front": [True, True, False],
                           "x_before": [0.5, 0.5, 0.5], "y_before": [0.0, 0.0, 0.0]})
    fig = charts.tradeoff_figure(points, "harmlessness", "helpfulness", "Harmlessness vs helpfulness")
    by_name = {t.name: t for t in fig.data if t.name}
    assert set(by_name) == {"before (base model)", "Pareto front", "ppo", "dpo"}
    front = by_name["Pareto front"]
    assert list(front.x) == [0.6, 0.9] and list(front.y) == [0.8, 0.1]  # sorted along x
    assert list(by_name["ppo"].hovertext) == ["a (r1)", "c (r3)"] and list(by_name["ppo"].x) == [0.9, 0.5]
    assert list(by_name["ppo"].marker.symbol) == ["star", "circle"]  # on the front, or not
    assert by_name["ppo"].marker.color == charts.METHOD_COLORS["ppo"]
    assert fig.layout.xaxis.title.text == "harmlessness" and fig.layout.yaxis.title.text == "helpfulness"
    empty = charts.tradeoff_figure(points.iloc[:0], "x", "y", "t")
    assert not empty.data and "no run has both values" in empty.layout.annotations[0].text


def test_every_live_panel_titles_its_axes_with_units():
    cols = ["objective/kl", "objective/kl_coef", "ppo/returns/mean", "env/reward_mean", "env/reward_std",
            "ppo/loss/policy", "objective/entropy", "ppo/policy/clipfrac", "env/response_length_mean",
            "time/tokens_per_s"]
    figs = charts.run_figures(charts.to_wide(long_frame(6, cols)))
    for name, fig in figs.items():
        assert fig.layout.yaxis.title.text, f"panel {name} has no y-axis title"
        assert fig.layout.xaxis.title.text == "training step"
    assert "nats" in figs["kl"].layout.yaxis.title.text
    assert "coefficient" in figs["kl"].layout.yaxis2.title.text
    assert figs["throughput"].layout.yaxis.title.text == "tokens per second"


def test_kl_coefficient_axis_shows_a_small_change_as_small():
    long = long_frame(20, ["objective/kl", "objective/kl_coef"])
    wide = charts.to_wide(long)
    wide["objective/kl_coef"] = np.linspace(0.200, 0.1985, len(wide))  # a 0.75 % fall
    fig = charts.panel_figure(wide, charts.PANELS[0])
    lo, hi = fig.layout.yaxis2.range
    assert hi - lo >= 0.2 * 0.19925 * 0.999, "the axis spans at least ±10 % of the value"
    assert lo <= 0.1985 and hi >= 0.200, "every value is on the axis"
    # a large change keeps its own span (the range is not clamped to ±10 %)
    wide["objective/kl_coef"] = np.linspace(0.2, 0.05, len(wide))
    lo, hi = charts.panel_figure(wide, charts.PANELS[0]).layout.yaxis2.range
    assert lo < 0.05 and hi > 0.2 and (hi - lo) < 0.2


def test_honest_range_of_nothing_finite_is_none():
    assert charts.honest_range([np.nan, np.inf]) is None
    assert charts.honest_range([0.0, 0.0]) is not None
