"""Table helpers of the pages: filtering the before/after table, formatting numbers. Pure pandas, no Streamlit."""

from __future__ import annotations

import math

import pandas as pd

BEFORE_AFTER_VIEWS = ("all", "biggest improvements", "regressions")
TEXT_COLUMNS = ("prompt", "response_before", "response_after")


def filter_before_after(table: pd.DataFrame, view: str = "all", query: str = "") -> pd.DataFrame:
    """Rows of the before/after table for a view and a text search (case-insensitive, in any text column).

    "biggest improvements": rows whose toxicity went down, largest drop first; "regressions": rows whose
    toxicity went up, largest rise first; "all": every row in hold-out order.
    """
    if view not in BEFORE_AFTER_VIEWS:
        raise ValueError(f"view must be one of {', '.join(BEFORE_AFTER_VIEWS)}; got {view!r}")
    out = table
    if query.strip():
        q = query.strip().lower()
        mask = pd.Series(False, index=out.index)
        for col in TEXT_COLUMNS:
            mask |= out[col].fillna("").str.lower().str.contains(q, regex=False)
        out = out[mask]
    if view == "biggest improvements":
        out = out[out["change"] < 0].sort_values("change", kind="stable")
    elif view == "regressions":
        out = out[out["change"] > 0].sort_values("change", ascending=False, kind="stable")
    return out


def holdout_count(n: int | None, samples_per_prompt: int | None = 1, prefix: str = "hold-out ") -> str:
    """How many hold-out responses a number counts, in words: "200 hold-out prompts", or with several responses
    per prompt "800 hold-out responses (200 prompts × 4)"; `prefix` goes before the first noun."""
    if n is None:
        return f"— {prefix}prompts"
    k = samples_per_prompt or 1
    if k == 1:
        return f"{n} {prefix}prompts"
    return f"{n} {prefix}responses ({n // k} prompts × {k})"


def fmt(value: float | None, spec: str = ".4f", missing: str = "—") -> str:
    """A number formatted, or `missing` for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)
