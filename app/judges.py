"""The judge accounting table of the live page: a pure function from a run's metrics to one row per LLM judge.

Responsible for: finding the "judge/<name>/<field>" columns (logged each step by engine.runner from the
reward's `metrics()`, cumulative per run), taking each one's latest value, and laying them out as a
table with readable column names.

Not responsible for: reading the store or rendering (pages/live.py), nor computing the numbers
(engine.rewards.judge_accounting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

JUDGE_PREFIX = "judge/"
# (metric field, column title), in the order the table shows them (the first ones fit a narrow page);
# cost is absent for models without a price.
FIELDS: tuple[tuple[str, str], ...] = (
    ("calls", "calls"),
    ("input_tokens", "input tokens"),
    ("output_tokens", "output tokens"),
    ("cost_usd", "est. cost (USD)"),
    ("p50_latency_s", "p50 latency (s)"),
    ("p95_latency_s", "p95 latency (s)"),
    ("retries", "retries"),
    ("parse_failures", "parse failures"),
    ("errors", "errors"),
    ("timeouts", "timeouts"),
    ("fallbacks", "fallbacks"),
    ("cache_hits", "cache hits"),
)
_INT_FIELDS = frozenset(f for f, _ in FIELDS if not f.endswith(("_s", "_usd")))


def judge_columns(columns: Sequence[str]) -> list[str]:
    """The columns that are judge metrics ("judge/<name>/<field>" with a known field)."""
    known = {f for f, _ in FIELDS}
    out = []
    for c in columns:
        c = str(c)
        if c.startswith(JUDGE_PREFIX):
            name, _, fld = c[len(JUDGE_PREFIX):].rpartition("/")  # a judge's name may itself hold "/"
            if name and fld in known:
                out.append(c)
    return out


def judge_table(wide: pd.DataFrame) -> pd.DataFrame:
    """One row per judge with its latest value of each accounting field; empty when the run has no judge.

    `wide` is a run's metrics with one row per step and one column per key (charts.to_wide). Only the
    judge columns are read; each takes its last non-missing value (a step may lack a judge's row).
    Columns: "judge", FIELDS' titles, then "step" (the last step with judge metrics); a field a judge
    never logged (cost for a model without a price) is NaN. Counts are ints where every judge has them.
    """
    if not isinstance(wide, pd.DataFrame):
        raise ValueError(f"wide must be a pandas DataFrame (one column per metric key), got {type(wide).__name__}")
    titles = [t for _, t in FIELDS]
    cols = judge_columns(list(wide.columns))
    if not cols:
        return pd.DataFrame(columns=["judge", *titles, "step"])
    sub = wide[cols].apply(pd.to_numeric, errors="coerce")
    has = sub.notna()
    last_step = sub.index[has.any(axis=1).to_numpy()].max()
    # Last non-missing value per column, without scanning the frame row by row.
    latest = sub.ffill().iloc[-1]
    rows: dict[str, dict[str, float]] = {}
    for col, value in latest.items():
        name, _, fld = col[len(JUDGE_PREFIX):].rpartition("/")
        rows.setdefault(name, {})[fld] = value
    table = pd.DataFrame(
        [{"judge": name, **{t: vals.get(f, np.nan) for f, t in FIELDS}, "step": last_step}
         for name, vals in sorted(rows.items())],
        columns=["judge", *titles, "step"])
    for f, t in FIELDS:
        if f in _INT_FIELDS and table[t].notna().all():
            table[t] = table[t].round().astype("int64")
    if pd.api.types.is_number(last_step):
        table["step"] = table["step"].astype("int64")
    return table
