"""The base class of the LLM judges: the batch loop around one request.

`Judge.score(prompts, responses)` renders the rubric, serves repeats from an in-memory cache, runs
the calls concurrently on a bounded thread pool with a per-call deadline, parses each reply, and
puts the fallback score where a call failed, timed out or gave no parsable score. Failures are
counted (engine.rewards.judge_accounting) and logged, never raised. Subclasses (BedrockJudge,
OpenAIJudge) implement `_call_one(text) -> JudgeReply` (one request, retries included).

Not responsible for: wire formats, clients and credentials (the subclasses), the rubrics
(`rubrics`), reading numbers out of text (`judge_parsing`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from engine.rewards.base import RewardResult
from engine.rewards.judge_accounting import JudgeAccounting
from engine.rewards.judge_parsing import parse_score
from engine.rewards.rubrics import Rubric, get_rubric

log = logging.getLogger(__name__)

CACHE_MAX_ENTRIES = 65_536  # least recently used entries are dropped beyond this
_POLL_S = 0.05  # how often the batch loop looks at calls still queued for a worker


@dataclass
class JudgeReply:
    """One judge answer: its text, token usage and how many retries it took."""

    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0


class JudgeCallError(Exception):
    """A judge request that failed for good (after its retries); `retries` are still accounted."""

    def __init__(self, message: str, retries: int = 0) -> None:
        super().__init__(message)
        self.retries = retries


@dataclass(eq=False)
class _Call:
    text: str
    cancel: threading.Event = field(default_factory=threading.Event)
    start: float | None = None
    end: float | None = None


def _check_number(name: str, value: Any, low: float | None = None, high: float | None = None,
                  low_open: bool = False, integer: bool = False) -> None:
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


class Judge:
    """Base of the LLM judges: the `RewardBackend` batch loop around one-request `_call_one`.

    raw signals: "<name>/score" (parsed score or fallback) and "<name>/parse_ok" (1.0 / 0.0).
    `score_range` is the rubric's range (used by the ensemble's minmax normalisation).
    """

    def __init__(self, *, rubric: str | Rubric | Mapping[str, Any], model_id: str, name: str,
                 temperature: float, top_p: float, max_tokens: int, max_workers: int, timeout_s: float,
                 max_attempts: int, fallback: float | None, cache: bool,
                 prices: Mapping[str, Any] | None) -> None:
        self.rubric = get_rubric(rubric)
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model id must be a non-empty string, got {model_id!r}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        _check_number("temperature", temperature, 0.0, 2.0)
        _check_number("top_p", top_p, 0.0, 1.0, low_open=True)
        _check_number("max_tokens", max_tokens, 1, None, integer=True)
        _check_number("max_workers", max_workers, 1, 256, integer=True)
        _check_number("timeout_s", timeout_s, 0.0, None, low_open=True)
        _check_number("max_attempts", max_attempts, 1, 20, integer=True)
        low, high = self.rubric.score_range
        if fallback is None:
            fallback = self.rubric.midpoint
        _check_number("fallback", fallback)
        if not low <= fallback <= high:
            raise ValueError(f"fallback must lie in the rubric's range [{low}, {high}], got {fallback!r}")
        self.model_id = model_id
        self.name = name
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_tokens = int(max_tokens)
        self.max_workers = int(max_workers)
        self.timeout_s = float(timeout_s)
        self.max_attempts = int(max_attempts)
        self.fallback = float(fallback)
        self.cache = bool(cache)
        self.score_range = (low, high)
        self.accounting = JudgeAccounting(name, model_id, prices)
        self._cache: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._tls = threading.local()  # the cancel event of the call running on this worker thread
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=f"judge-{name}")

    # -- what subclasses implement -------------------------------------------------------------

    def _call_one(self, text: str) -> JudgeReply:
        """Send one rubric-rendered message and return the reply; raise JudgeCallError on failure."""
        raise NotImplementedError

    def _cancelled(self) -> threading.Event:
        """The current call's cancel event: set once the batch gave up on it (deadline passed).
        Subclasses check it before each retry so an abandoned call stops early."""
        return getattr(self._tls, "cancel", None) or threading.Event()

    def _repr_fields(self) -> dict[str, Any]:
        return {}

    # -- the RewardBackend interface -----------------------------------------------------------

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Judge each (prompt, response) with the rubric; failed items get the fallback score."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        for arg, items in (("prompts", prompts), ("responses", responses)):
            for i, t in enumerate(items):
                if not isinstance(t, str):
                    raise ValueError(f"{arg}[{i}] must be a str, got {type(t).__name__}")
        texts = [self.rubric.render(p, r) for p, r in zip(prompts, responses, strict=True)]

        values: list[float | None] = [None] * len(texts)
        groups: list[tuple[str, list[int]]] = []  # one judge call per group of identical texts
        index: dict[str, int] = {}
        for i, text in enumerate(texts):
            cached = self._cache_get(text) if self.cache else None
            if cached is not None:
                values[i] = cached
                self.accounting.record_cache_hit()
            elif self.cache and text in index:  # a repeat within the batch shares the first one's call
                groups[index[text]][1].append(i)
                self.accounting.record_cache_hit()
            else:
                index[text] = len(groups)
                groups.append((text, [i]))

        for (text, items), value in zip(groups, self._run_calls([g[0] for g in groups]), strict=True):
            if value is not None and self.cache:
                self._cache_put(text, value)
            for i in items:
                values[i] = value

        scores = [self.fallback if v is None else v for v in values]
        ok = [0.0 if v is None else 1.0 for v in values]
        return RewardResult(scores=scores, raw={f"{self.name}/score": list(scores), f"{self.name}/parse_ok": ok})

    def metrics(self) -> dict[str, float]:
        """The accounting snapshot (judge/<name>/... metrics)."""
        return self.accounting.snapshot()

    def close(self) -> None:
        """Stop the worker threads (idle threads cost nothing, so this is optional)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Deliberately lists only non-secret settings: credentials never live on this object.
        fields = {"name": self.name, "model_id": self.model_id, "rubric": self.rubric.name, **self._repr_fields()}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"

    # -- internals -----------------------------------------------------------------------------

    def _cache_key(self, text: str) -> tuple[str, str, str]:
        return (self.model_id, self.rubric.name, text)

    def _cache_get(self, text: str) -> float | None:
        key = self._cache_key(text)
        with self._cache_lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def _cache_put(self, text: str, value: float) -> None:
        with self._cache_lock:
            self._cache[self._cache_key(text)] = value
            self._cache.move_to_end(self._cache_key(text))
            while len(self._cache) > CACHE_MAX_ENTRIES:
                self._cache.popitem(last=False)

    def _work(self, call: _Call) -> JudgeReply:
        """Runs on a worker thread: one request, its usage accounted even if the batch gave up on it."""
        call.start = time.monotonic()
        self._tls.cancel = call.cancel
        try:
            reply = self._call_one(call.text)
        except JudgeCallError as e:
            self.accounting.add_usage(0, 0, e.retries)
            raise
        finally:
            call.end = time.monotonic()
            self._tls.cancel = None
        self.accounting.add_usage(reply.input_tokens, reply.output_tokens, reply.retries)
        return reply

    def _run_calls(self, texts: list[str]) -> list[float | None]:
        """Parsed score per text (None = failed), each call given at most timeout_s from its start."""
        calls = [_Call(t) for t in texts]
        results: list[float | None] = [None] * len(calls)
        pending: dict[Future, int] = {self._pool.submit(self._work, c): i for i, c in enumerate(calls)}
        failures: list[str] = []
        low, high = self.score_range
        while pending:
            now = time.monotonic()
            starts = [calls[i].start for i in pending.values()]
            wait_s = min((s + self.timeout_s - now for s in starts if s is not None), default=_POLL_S)
            if any(s is None for s in starts):  # queued calls: look again soon to start their clocks
                wait_s = min(wait_s, _POLL_S)
            done, _ = wait(list(pending), timeout=max(wait_s, 0.0), return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                call = calls[i]
                latency = (call.end or time.monotonic()) - (call.start or time.monotonic())
                try:
                    reply = fut.result()
                except Exception as e:  # JudgeCallError or anything a client raised: a failed item, not a crash
                    self.accounting.record_call(latency, "error")
                    failures.append(f"{type(e).__name__}: {str(e)[:200]}")
                    continue
                value = parse_score(reply.text, low, high)
                self.accounting.record_call(latency, "ok" if value is not None else "parse_failure")
                if value is None:
                    failures.append(f"no score in [{low}, {high}] in reply {reply.text[:80]!r}")
                results[i] = value
            now = time.monotonic()
            for fut, i in list(pending.items()):
                start = calls[i].start
                if start is not None and now - start >= self.timeout_s:
                    calls[i].cancel.set()  # the worker stops before its next retry
                    del pending[fut]
                    self.accounting.record_call(now - start, "timeout")
                    failures.append(f"timed out after {self.timeout_s:g}s")
        if failures:
            log.warning("judge %s: %d of %d calls fell back to %g (first: %s)", self.name, len(failures),
                        len(calls), self.fallback, failures[0])
        return results
