"""app.judges.judge_table: the live page's judge accounting table from a synthetic metrics frame."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app.charts import to_wide
from app.judges import FIELDS, judge_columns, judge_table


def _long(rows: list[tuple[int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"step": s, "key": k, "value": v, "time": float(s)} for s, k, v in rows])


def _judge_rows(step: int, name: str, calls: int, cost: float | None) -> list[tuple[int, str, float]]:
    p = f"judge/{name}/"
    rows = [(step, p + "calls", calls), (step, p + "input_tokens", 100 * calls), (step, p + "output_tokens", 3 * calls),
            (step, p + "retries", step), (step, p + "parse_failures", 1), (step, p + "errors", 0),
            (step, p + "timeouts", 0), (step, p + "fallbacks", 1), (step, p + "cache_hits", 2),
            (step, p + "p50_latency_s", 0.1 * step), (step, p + "p95_latency_s", 0.3 * step)]
    if cost is not None:
        rows.append((step, p + "cost_usd", cost))
    return rows


def test_latest_values_one_row_per_judge():
    rows = [(s, "objective/kl", 0.01 * s) for s in (1, 2, 3)] + [(s, "env/reward/claude", 1.0) for s in (1, 2, 3)]
    for step in (1, 2, 3):
        rows += _judge_rows(step, "claude", calls=4 * step, cost=0.002 * step)
    # "local/llama" has no price (no cost key) and logged nothing at step 3: its last values are step 2's.
    for step in (1, 2):
        rows += _judge_rows(step, "local/llama", calls=5 * step, cost=None)
    table = judge_table(to_wide(_long(rows)))

    assert list(table.columns) == ["judge", *[t for _, t in FIELDS], "step"]
    assert list(table["judge"]) == ["claude", "local/llama"]
    claude = table.set_index("judge").loc["claude"]
    llama = table.set_index("judge").loc["local/llama"]
    assert claude["step"] == 3
    assert claude["calls"] == 12 and claude["input tokens"] == 1200 and claude["output tokens"] == 36
    assert claude["retries"] == 3 and claude["parse failures"] == 1 and claude["cache hits"] == 2
    assert claude["p50 latency (s)"] == pytest.approx(0.3) and claude["p95 latency (s)"] == pytest.approx(0.9)
    assert claude["est. cost (USD)"] == pytest.approx(0.006)
    assert llama["calls"] == 10 and llama["retries"] == 2  # step 2, carried over the missing step 3
    assert math.isnan(llama["est. cost (USD)"])
    assert table["calls"].dtype == np.int64  # counts shown as integers


def test_no_judge_metrics_gives_empty_table_and_ignores_other_keys():
    wide = to_wide(_long([(1, "objective/kl", 0.1), (1, "env/reward/profanity", 0.5),
                          (1, "judge/x/unknown_field", 3.0)]))
    table = judge_table(wide)
    assert table.empty and "calls" in table.columns
    assert judge_table(to_wide(pd.DataFrame(columns=["step", "key", "value", "time"]))).empty


def test_judge_columns_and_bad_input():
    cols = ["judge/a/calls", "judge/a/b/cost_usd", "judge/calls", "judge/a/other", "env/reward/a"]
    assert judge_columns(cols) == ["judge/a/calls", "judge/a/b/cost_usd"]
    with pytest.raises(ValueError, match="wide must be a pandas DataFrame"):
        judge_table({"judge/a/calls": [1]})
