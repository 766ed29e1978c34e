"""The accounting of an LLM judge's calls.

Responsible for:
- `JudgeAccounting`: thread-safe per-judge counters (calls, tokens, latencies, retries, parse
  failures, errors, timeouts, cache hits) and the estimated cost from a price table; `snapshot()`
  gives them as flat metrics ("judge/<name>/calls", ".../p95_latency_s", ".../cost_usd").

Not responsible for: making the calls (engine.rewards.judge and its subclasses).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

# USD per 1,000 (input, output) tokens, on-demand, us-east-1 (AWS Bedrock price list).
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "anthropic.claude-3-sonnet-20240229-v1:0": (0.003, 0.015),
    "anthropic.claude-3-5-sonnet-20240620-v1:0": (0.003, 0.015),
    "anthropic.claude-3-haiku-20240307-v1:0": (0.00025, 0.00125),
}
LATENCY_WINDOW = 2048  # percentiles are over the most recent calls, so they follow the endpoint's current state


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an ascending list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def price_table(prices: Mapping[str, Any] | None = None) -> dict[str, tuple[float, float]]:
    """DEFAULT_PRICES updated with `prices`: {model id: (input, output)} or {model id: {"input", "output"}},
    in USD per 1k tokens."""
    table = dict(DEFAULT_PRICES)
    for model, p in (prices or {}).items():
        if isinstance(p, Mapping):
            pair = (p.get("input"), p.get("output"))
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            pair = tuple(p)
        else:
            raise ValueError(f"prices[{model!r}] must be (input, output) or {{'input': x, 'output': y}} "
                             f"in USD per 1k tokens, got {p!r}")
        for which, v in zip(("input", "output"), pair, strict=True):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"prices[{model!r}] {which} must be a finite number >= 0, got {v!r}")
        table[model] = (float(pair[0]), float(pair[1]))
    return table


def _lookup_price(table: Mapping[str, tuple[float, float]], model_id: str) -> tuple[float, float] | None:
    if model_id in table:
        return table[model_id]
    # Cross-region inference profiles ("us.anthropic...") cost the same as the model they route to.
    head, _, rest = model_id.partition(".")
    if rest and len(head) <= 4 and rest in table:
        return table[rest]
    return None


class JudgeAccounting:
    """Thread-safe counters of one judge. Counts are cumulative; latency percentiles cover the
    last LATENCY_WINDOW calls; cost is estimated from the price table (absent if the model has no price)."""

    def __init__(self, name: str, model_id: str, prices: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.model_id = model_id
        self.price = _lookup_price(price_table(prices), model_id)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._counts = dict.fromkeys(
            ("calls", "input_tokens", "output_tokens", "retries", "parse_failures", "truncated", "errors", "timeouts",
             "cache_hits"), 0)

    def add_usage(self, input_tokens: int, output_tokens: int, retries: int) -> None:
        """Tokens and retries of one finished request (also of one that finished after its deadline)."""
        with self._lock:
            self._counts["input_tokens"] += int(input_tokens)
            self._counts["output_tokens"] += int(output_tokens)
            self._counts["retries"] += int(retries)

    def record_call(self, latency_s: float, outcome: str) -> None:
        """One judge call's latency and outcome: ok | parse_failure | truncated | error | timeout.
        A truncated reply (cut at max_tokens, never scored) is also a parse failure."""
        keys = {"ok": (), "parse_failure": ("parse_failures",), "truncated": ("parse_failures", "truncated"),
                "error": ("errors",), "timeout": ("timeouts",)}[outcome]
        with self._lock:
            self._counts["calls"] += 1
            self._latencies.append(float(latency_s))
            for key in keys:
                self._counts[key] += 1

    def record_cache_hit(self, n: int = 1) -> None:
        with self._lock:
            self._counts["cache_hits"] += n

    def count(self, key: str) -> int:
        """One cumulative counter (calls, input_tokens, ..., cache_hits)."""
        with self._lock:
            return self._counts[key]

    def cost_usd(self) -> float | None:
        """Estimated spend so far, or None when the model is not in the price table."""
        if self.price is None:
            return None
        with self._lock:
            return (self._counts["input_tokens"] * self.price[0] + self._counts["output_tokens"] * self.price[1]) / 1000

    def snapshot(self) -> dict[str, float]:
        """Flat metrics: judge/<name>/{calls, input_tokens, output_tokens, retries, parse_failures, truncated,
        errors, timeouts, fallbacks, cache_hits, p50_latency_s, p95_latency_s[, cost_usd]}. `fallbacks` counts
        the calls that gave no score (parse failures, errors, timeouts); what they scored is on_unparsed's."""
        cost = self.cost_usd()
        with self._lock:
            counts = dict(self._counts)
            lat = sorted(self._latencies)
        prefix = f"judge/{self.name}/"
        out = {prefix + k: float(v) for k, v in counts.items()}
        out[prefix + "fallbacks"] = float(counts["parse_failures"] + counts["errors"] + counts["timeouts"])
        out[prefix + "p50_latency_s"] = _percentile(lat, 50)
        out[prefix + "p95_latency_s"] = _percentile(lat, 95)
        if cost is not None:
            out[prefix + "cost_usd"] = cost
        return out


