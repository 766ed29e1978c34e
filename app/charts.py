"""Charts for the lab: pure functions from DataFrames to plotly figures (no Streamlit, no store).

Responsible for: shaping metric rows into one table per run (`to_wide`), smoothing (EMA), keeping a
chart light enough to draw at once (`downsample`: min/max per bucket, ~2,000 points per series, so
20,000 steps × 20 series still render in well under a second), and the figures of the live page
(`PANELS`), the runs comparison and the before/after page.

Not responsible for: reading data or deciding what a page shows; callers pass frames in.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

MAX_POINTS = 2000  # per series, after downsampling
TIME_COL = "time_s"  # seconds since the run's first metric row, added by to_wide
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


@dataclass(frozen=True)
class Panel:
    """One live chart: its metric keys, keys on a second y axis, a mean±std band, and a key prefix."""

    name: str
    title: str
    lines: tuple[str, ...] = ()
    secondary: tuple[str, ...] = ()  # drawn against a right-hand axis (e.g. the KL coefficient)
    band: tuple[str, str] | None = None  # (mean key, std key): a shaded mean ± std
    prefix: str | None = None  # a line per key directly under this prefix (one per reward backend)
    y_title: str = ""  # the left axis: quantity and unit
    y2_title: str = ""  # the right axis (secondary keys)


PANELS: tuple[Panel, ...] = (
    Panel("kl", "KL (objective/kl) and its coefficient β", ("objective/kl",),
          secondary=("objective/kl_coef",), y_title="KL to the reference (nats)",
          y2_title="KL coefficient β (dashed)"),
    Panel("returns", "Mean return (ppo/returns/mean)", ("ppo/returns/mean",), y_title="return (reward units)"),
    Panel("reward", "Reward: mean ± std, and each backend", band=("env/reward_mean", "env/reward_std"),
          prefix="env/reward/", y_title="reward (reward units)"),
    Panel("losses", "Losses", ("ppo/loss/policy", "ppo/loss/value"), y_title="loss"),
    Panel("entropy", "Entropy (objective/entropy)", ("objective/entropy",), y_title="entropy (nats per token)"),
    Panel("clipfrac", "Policy clip fraction (ppo/policy/clipfrac)", ("ppo/policy/clipfrac",),
          y_title="fraction of tokens clipped"),
    Panel("length", "Mean response length (tokens)", ("env/response_length_mean",), y_title="tokens"),
    Panel("throughput", "Throughput (tokens/s)", ("time/tokens_per_s",), y_title="tokens per second"),
)


# ---- data shaping ---------------------------------------------------------------------------------


def to_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Metric rows (step, key, value, time) → one row per step, one column per key, plus TIME_COL.

    A key logged twice at one step keeps its last value. TIME_COL is seconds since the first row.
    """
    if long is None or long.empty:
        return pd.DataFrame(columns=[TIME_COL], index=pd.Index([], name="step", dtype="int64"), dtype="float64")
    long = long.drop_duplicates(["step", "key"], keep="last")
    wide = long.pivot(index="step", columns="key", values="value").sort_index()
    wide.columns.name = None
    t = long.groupby("step")["time"].min()
    wide[TIME_COL] = (t - t.min()).reindex(wide.index)
    return wide.astype("float64")


def ema(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """Exponential moving average with TensorBoard's `weight` in [0, 1) (0: none), bias-corrected.

    NaNs (diverged or missing steps) stay NaN and do not disturb the average around them.
    """
    y = np.asarray(values, dtype=float)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    if weight == 0.0 or y.size == 0:
        return y.copy()
    out = np.full_like(y, np.nan)
    finite = ~np.isnan(y)
    x = y[finite]
    if x.size:
        from scipy.signal import lfilter  # scipy comes with scikit-learn; imported here to keep the app's start light

        # acc_t = w·acc_{t-1} + (1-w)·x_t over the non-NaN values, divided by its value for a constant 1 series
        acc = lfilter([1.0 - weight], [1.0, -weight], x)
        out[finite] = acc / (1.0 - weight ** np.arange(1, x.size + 1))
    return out


def downsample_indices(y: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ~max_points points that keep the shape: the min and max of each bucket.

    Unlike a stride, min/max per bucket keeps spikes (a KL blow-up at one step stays visible). The
    first and last points are always kept; an all-NaN bucket keeps one NaN, so gaps stay gaps.
    """
    n = len(y)
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    buckets = max_points // 2 - 1
    size = -(-n // buckets)  # ceil
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    grid = padded.reshape(buckets, size)
    lo = np.where(np.isnan(grid), np.inf, grid).argmin(axis=1)
    hi = np.where(np.isnan(grid), -np.inf, grid).argmax(axis=1)
    offsets = np.arange(buckets) * size
    idx = np.concatenate([offsets + lo, offsets + hi, [0, n - 1]])
    return np.unique(idx[idx < n])


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) cut to at most ~max_points points with `downsample_indices`."""
    idx = downsample_indices(np.asarray(y, dtype=float), max_points)
    return np.asarray(x)[idx], np.asarray(y, dtype=float)[idx]


def panel_keys(panel: Panel, columns: Sequence[str]) -> list[str]:
    """The keys a panel draws that exist in `columns` (prefix keys sorted)."""
    keys = [k for k in panel.lines + panel.secondary if k in columns]
    if panel.band:
        keys += [k for k in panel.band if k in columns]
    if panel.prefix:
        keys += prefixed(panel.prefix, columns)
    return keys


def prefixed(prefix: str, columns: Sequence[str]) -> list[str]:
    """Keys directly under `prefix`, sorted: "env/reward/jigsaw" but not its signal "env/reward/jigsaw/p_toxic"."""
    return sorted(c for c in columns if c.startswith(prefix) and "/" not in c[len(prefix):])


# ---- figures ----------------------------------------------------------------------------------------


def honest_range(values: Sequence[float] | np.ndarray, min_rel: float = 0.10) -> list[float] | None:
    """A y range for a slowly moving quantity (the KL coefficient) that shows at least ±`min_rel` of its value,
    so a < 1 % change does not fill the axis and look like a cliff; None when there is nothing finite to show."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    center = (lo + hi) / 2
    half = max((hi - lo) / 2 * 1.1, abs(center) * min_rel, 1e-12)
    return [center - half, center + half]


def _layout(fig: go.Figure, title: str, x: str, height: int) -> go.Figure:
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0.0),
                      hovermode="x unified", uirevision=title)  # uirevision keeps zoom across live updates
    fig.update_xaxes(title_text="training step" if x == "step" else "wall time since the first step (s)")
    return fig


def _xy(wide: pd.DataFrame, key: str, x: str, smoothing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x values, raw y and smoothed y of one series. NaN steps stay in: plotly draws them as gaps."""
    xs = wide.index.to_numpy() if x == "step" else wide[TIME_COL].to_numpy()
    ys = wide[key].to_numpy(dtype=float)
    return xs, ys, ema(ys, smoothing) if smoothing else ys


def _line(name: str, xs, ys, color: str, *, opacity: float = 1.0, legend: bool = True, yaxis: str = "y",
          dash: str | None = None) -> go.Scatter:
    return go.Scatter(x=xs, y=ys, name=name, mode="lines", line=dict(color=color, width=1.6, dash=dash),
                      opacity=opacity, showlegend=legend, legendgroup=name, yaxis=yaxis)


def panel_figure(wide: pd.DataFrame, panel: Panel, x: str = "step", smoothing: float = 0.0,
                 max_points: int = MAX_POINTS, height: int = 340) -> go.Figure:
    """One live chart of a run. With smoothing, the raw series shows faintly behind the EMA."""
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    fig = go.Figure()
    cols = list(wide.columns)
    colors = itertools.cycle(PALETTE)

    def add(key: str, yaxis: str = "y", dash: str | None = None) -> None:
        color = next(colors)
        xs, raw, smooth = _xy(wide, key, x, smoothing)
        if smoothing:
            fig.add_trace(_line(key, *downsample(xs, raw, max_points), color, opacity=0.25, legend=False,
                                yaxis=yaxis, dash=dash))
        fig.add_trace(_line(key, *downsample(xs, smooth, max_points), color, yaxis=yaxis, dash=dash))

    if panel.band and panel.band[0] in cols:
        mean_key, std_key = panel.band
        color = next(colors)
        xs, _, mean = _xy(wide, mean_key, x, smoothing)
        std = wide[std_key].to_numpy(dtype=float) if std_key in cols else np.zeros(len(wide))
        std = ema(std, smoothing) if smoothing else std
        idx = downsample_indices(mean, max_points)
        xb, mb, sb = xs[idx], mean[idx], np.nan_to_num(std[idx])
        fig.add_trace(go.Scatter(x=np.concatenate([xb, xb[::-1]]), y=np.concatenate([mb + sb, (mb - sb)[::-1]]),
                                 fill="toself", fillcolor="rgba(31,119,180,0.15)", line=dict(width=0), mode="lines",
                                 name=f"{mean_key} ± std", hoverinfo="skip"))
        fig.add_trace(_line(mean_key, xb, mb, color))
    for key in panel.lines:
        if key in cols:
            add(key)
    if panel.prefix:
        for key in prefixed(panel.prefix, cols):
            add(key, dash="dot")
    secondary = [k for k in panel.secondary if k in cols]
    for key in secondary:
        add(key, yaxis="y2", dash="dash")
    if secondary:
        values = np.concatenate([wide[k].to_numpy(dtype=float) for k in secondary])
        fig.update_layout(yaxis2=dict(overlaying="y", side="right", showgrid=False,
                                      title_text=panel.y2_title or ", ".join(secondary), tickformat=".4~g",
                                      range=honest_range(values)))
    if panel.y_title:
        fig.update_layout(yaxis_title_text=panel.y_title)
    if not fig.data:
        fig.add_annotation(text="no data yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return _layout(fig, panel.title, x, height)


def run_figures(wide: pd.DataFrame, x: str = "step", smoothing: float = 0.0, max_points: int = MAX_POINTS,
                panels: Sequence[Panel] = PANELS) -> dict[str, go.Figure]:
    """Every live panel of a run, by panel name."""
    return {p.name: panel_figure(wide, p, x, smoothing, max_points) for p in panels}


def overlay_figure(wides: Mapping[str, pd.DataFrame], key: str, x: str = "step", smoothing: float = 0.0,
                   max_points: int = MAX_POINTS, height: int = 320) -> go.Figure:
    """One metric of several runs on one chart, a line per run (label → wide frame)."""
    fig = go.Figure()
    for i, (label, wide) in enumerate(wides.items()):
        if key not in wide.columns:
            continue
        xs, _, ys = _xy(wide, key, x, smoothing)
        fig.add_trace(_line(label, *downsample(xs, ys, max_points), PALETTE[i % len(PALETTE)]))
    if not fig.data:
        fig.add_annotation(text=f"no {key} in these runs", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return _layout(fig, key, x, height)


def toxicity_histogram(table: pd.DataFrame, bins: int = 20, height: int = 300) -> go.Figure:
    """Distribution of toxicity before and after (from the before/after table)."""
    fig = go.Figure()
    edges = dict(start=0.0, end=1.0, size=1.0 / bins)
    for col, name, color in (("toxicity_before", "before", PALETTE[7]), ("toxicity_after", "after", PALETTE[0])):
        if col in table:
            fig.add_trace(go.Histogram(x=table[col].dropna(), name=name, xbins=edges, marker_color=color, opacity=0.6))
    fig.update_layout(barmode="overlay", height=height, margin=dict(l=10, r=10, t=40, b=10),
                      title={"text": "Toxicity of hold-out responses", "font": {"size": 14}},
                      xaxis_title="toxicity (evaluator probability)", yaxis_title="responses")
    return fig


def compare_summaries_figure(summaries: Mapping[str, dict], height: int = 320) -> go.Figure:
    """Mean toxicity before and after per run, the after bar with the 95 % interval of the change."""
    labels, before, after, err_lo, err_hi = [], [], [], [], []
    for label, s in summaries.items():
        b, a = (s or {}).get("before") or {}, (s or {}).get("after") or {}
        if "mean" not in b or "mean" not in a:
            continue
        labels.append(label)
        before.append(b["mean"])
        after.append(a["mean"])
        delta = a["mean"] - b["mean"]
        lo, hi = s.get("delta_ci_low", np.nan), s.get("delta_ci_high", np.nan)
        err_lo.append(max(delta - lo, 0.0) if lo == lo else 0.0)
        err_hi.append(max(hi - delta, 0.0) if hi == hi else 0.0)
    fig = go.Figure([
        go.Bar(name="before", x=labels, y=before, marker_color=PALETTE[7]),
        go.Bar(name="after", x=labels, y=after, marker_color=PALETTE[2],
               error_y=dict(type="data", symmetric=False, array=err_hi, arrayminus=err_lo)),
    ])
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=40, b=10),
                      title={"text": "Mean toxicity before / after (95 % CI of the change)", "font": {"size": 14}},
                      yaxis_title="mean toxicity")
    return fig


# ---- comparing methods ------------------------------------------------------------------------------

METHOD_COLORS = {"ppo": PALETTE[0], "dpo": PALETTE[1], "rloo": PALETTE[2], "grpo": PALETTE[3], "dpo_ai": PALETTE[4]}


def run_label(name: str, run_id: str) -> str:
    """How a run is named on the comparison charts: its name, and its id when that differs."""
    return run_id if not name or name == run_id else f"{name} ({run_id})"


def comparison_bars(table: pd.DataFrame, height: int = 340) -> go.Figure:
    """Mean toxicity before and after per run (comparison table rows: id, name, method, tox_before, tox_after,
    tox_change_%), the after bar labelled with its % change; each run's method under its name."""
    rows = table[table["tox_before"].notna() | table["tox_after"].notna()] if not table.empty else table
    labels = [f"{run_label(n, i)}<br>{m}" for n, i, m in zip(rows.get("name", []), rows.get("id", []),
                                                             rows.get("method", []), strict=True)]
    fig = go.Figure()
    if len(rows):
        fig.add_trace(go.Bar(name="before (base model)", x=labels, y=rows["tox_before"], marker_color=PALETTE[7],
                             hovertemplate="%{x}<br>%{y:.4f}<extra>before</extra>"))
        change = [f"{c:+.0f} %" if c == c else "" for c in rows["tox_change_%"]]
        fig.add_trace(go.Bar(name="after (trained)", x=labels, y=rows["tox_after"], text=change,
                             textposition="outside", marker_color=PALETTE[2],
                             hovertemplate="%{x}<br>%{y:.4f} (%{text})<extra>after</extra>"))
    else:
        fig.add_annotation(text="no evaluated runs", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(barmode="group", height=height, margin=dict(l=10, r=10, t=40, b=10),
                      title={"text": "Mean toxicity of hold-out responses, before / after", "font": {"size": 14}},
                      yaxis_title="mean toxicity", legend=dict(orientation="h", y=-0.3))
    return fig


def tradeoff_figure(points: pd.DataFrame, x_title: str, y_title: str, title: str, height: int = 420,
                    front_name: str = "Pareto front") -> go.Figure:
    """One point per run (engine.compare.tradeoff rows: id, name, method, x, y, on_front, x_before, y_before),
    coloured by method, name and values on hover; the Pareto front as a dashed line through its points; where
    known, each run's base-model point in grey, joined to its trained point by a faint line."""
    fig = go.Figure()
    if points is None or points.empty:
        fig.add_annotation(text="no run has both values", showarrow=False, x=0.5, y=0.5, xref="paper",
                           yref="paper")
    else:
        labels = [run_label(n, i) for n, i in zip(points["name"], points["id"], strict=True)]
        points = points.assign(label=labels)
        before = points[points["x_before"].notna() & points["y_before"].notna()]
        if len(before):
            xs, ys = [], []
            for _, r in before.iterrows():
                xs += [r["x_before"], r["x"], None]
                ys += [r["y_before"], r["y"], None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="rgba(127,127,127,0.35)", width=1),
                                     hoverinfo="skip", showlegend=False))
            fig.add_trace(go.Scatter(x=before["x_before"], y=before["y_before"], mode="markers",
                                     name="before (base model)", hovertext=before["label"],
                                     marker=dict(color=PALETTE[7], size=9, symbol="circle-open"),
                                     hovertemplate="%{hovertext}, base model<br>" + x_title + ": %{x:.4f}<br>"
                                     + y_title + ": %{y:.4f}<extra></extra>"))
        front = points[points["on_front"].astype(bool)].sort_values(["x", "y"])
        if len(front) > 1:
            fig.add_trace(go.Scatter(x=front["x"], y=front["y"], mode="lines", name=front_name,
                                     line=dict(color="#444", width=1.5, dash="dash"), hoverinfo="skip"))
        for method, part in points.groupby("method", sort=False):
            symbols = ["star" if f else "circle" for f in part["on_front"]]
            fig.add_trace(go.Scatter(
                x=part["x"], y=part["y"], mode="markers", name=str(method), hovertext=part["label"],
                marker=dict(color=METHOD_COLORS.get(str(method), PALETTE[9]), size=13, symbol=symbols,
                            line=dict(color="white", width=1)),
                hovertemplate="<b>%{hovertext}</b><br>" + x_title + ": %{x:.4f}<br>" + y_title
                + ": %{y:.4f}<extra>" + str(method) + "</extra>"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), hovermode="closest",
                      title={"text": title, "font": {"size": 14}}, xaxis_title=x_title, yaxis_title=y_title,
                      legend=dict(orientation="h", y=-0.2))
    return fig
