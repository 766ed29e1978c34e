"""The base class of the LLM judges: the batch loop around one request.

`Judge.score(prompts, responses)` renders the rubric, serves repeats from an in-memory cache, runs
the calls concurrently on a bounded thread pool with a deadline per call counted from submission
(queue time included), parses each reply, and decides what an item without a parsed score is worth
(`on_unparsed`). Subclasses (BedrockJudge, OpenAIJudge) implement `_call_one(text) -> JudgeReply`
(one request, retries included).

Failing loudly: an authentication / authorisation error (HTTP 401/403, AccessDenied, UnrecognizedClient,
ExpiredToken) raises `JudgeFailed` at once, and so does the `max_failed_steps`-th consecutive batch in
which no call gave a parsed score. The run that owns the judge then stops as `failed`, with the
(redacted) reason as its error. Other failures are counted (engine.rewards.judge_accounting) and logged.

on_unparsed (a call that failed, timed out, was cut at max_tokens, refused, or gave no parsable score):
- "worst" (default): the rubric's worst score (its low end), so a reply that makes the judge refuse
  never earns more than the worst text it could have scored;
- "mask": the item carries no reward signal: its score is the mean of the parsed scores of the items
  with the same prompt (the responses PPO compares it with under k > 1), else of the whole batch. Under
  PPO's per-prompt leave-one-out baseline its centred reward is then exactly 0, and under batch
  whitening it sits at the mean. (A weight of 0 in the loss would need the trainer to take a mask;
  this keeps the reward a plain list of floats every method understands.)
Either way the item is marked invalid (`RewardResult.valid`), so running z-score statistics skip it.

Not responsible for: wire formats, clients and credentials (the subclasses), the rubrics
(`rubrics`), reading numbers out of text (`judge_parsing`), option checking (`judge_options`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from engine.rewards.base import RewardResult
from engine.rewards.judge_accounting import JudgeAccounting
from engine.rewards.judge_parsing import parse_score
from engine.rewards.redact import redact
from engine.rewards.rubrics import Rubric, get_rubric

log = logging.getLogger(__name__)

CACHE_MAX_ENTRIES = 65_536  # least recently used entries are dropped beyond this
_MESSAGE_CHARS = 300  # an endpoint's error text is cut to this in warnings and errors


@dataclass
class JudgeReply:
    """One judge answer: its text, token usage, retries, and why generation stopped.

    stop: "end" (a complete answer), "max_tokens" (cut short: never scored) or "refused" (a content
    filter or the model's refusal stop reason: never scored)."""

    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    stop: str = "end"


class JudgeCallError(Exception):
    """A judge request that failed for good (after its retries); `retries` are still accounted. `timed_out`: it
    ran out of its time budget (counted as a timeout, like a call the batch's deadline abandoned)."""

    def __init__(self, message: str, retries: int = 0, timed_out: bool = False) -> None:
        super().__init__(message)
        self.retries = retries
        self.timed_out = timed_out


class JudgeAuthError(JudgeCallError):
    """The endpoint refused the credentials (HTTP 401/403, AccessDenied, ...): no later call can succeed."""


class JudgeFailed(RuntimeError):
    """The judge cannot give a training signal: raised out of `score` to stop the run (message redacted)."""


@dataclass(eq=False)
class _Call:
    text: str
    deadline: float  # time.monotonic() by which the batch stops waiting for it
    cancel: threading.Event = field(default_factory=threading.Event)
    start: float | None = None
    end: float | None = None


class Judge:
    """Base of the LLM judges: the `RewardBackend` batch loop around one-request `_call_one`.

    raw signals: "<name>/score" (the score used: parsed, or what on_unparsed gave) and "<name>/parse_ok"
    (1.0 / 0.0). `score_range` is the rubric's range (used by the ensemble's minmax normalisation).
    Options are checked by the subclasses (engine.rewards.judge_options) before this runs.
    """

    def __init__(self, *, rubric: str | Rubric | Mapping[str, Any], model_id: str, name: str,
                 temperature: float, top_p: float, max_tokens: int, max_workers: int, timeout_s: float,
                 max_attempts: int, on_unparsed: str, max_failed_steps: int, cache: bool,
                 prices: Mapping[str, Any] | None) -> None:
        self.rubric = get_rubric(rubric)
        self.model_id = model_id
        self.name = name
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.max_tokens = int(max_tokens)
        self.max_workers = int(max_workers)
        self.timeout_s = float(timeout_s)
        self.max_attempts = int(max_attempts)
        self.on_unparsed = on_unparsed
        self.max_failed_steps = int(max_failed_steps)
        self.cache = bool(cache)
        self.score_range = self.rubric.score_range
        self.accounting = JudgeAccounting(name, model_id, prices)
        self._failed_steps = 0  # consecutive batches without one parsed score
        self._failed_reasons: Counter[str] = Counter()  # outcomes of those batches' calls
        self._cache: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._tls = threading.local()  # the cancel event of the call running on this worker thread
        self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=f"judge-{name}")

    @property
    def worst(self) -> float:
        """The rubric's worst score (its low end: a judge's score is a reward, higher is better)."""
        return self.score_range[0]

    # -- what subclasses implement -------------------------------------------------------------

    def _call_one(self, text: str) -> JudgeReply:
        """Send one rubric-rendered message and return the reply; raise JudgeCallError on failure
        (JudgeAuthError when the credentials are refused)."""
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        """Secret values this judge's requests carry (masked in every message it writes)."""
        return []

    def _cancelled(self) -> threading.Event:
        """The current call's cancel event: set once the batch gave up on it (deadline passed).
        Subclasses check it before each retry so an abandoned call stops early."""
        return getattr(self._tls, "cancel", None) or threading.Event()

    def _deadline(self) -> float:
        """The current call's deadline (time.monotonic()): transports bound their reads by it."""
        return getattr(self._tls, "deadline", None) or time.monotonic() + self.timeout_s

    def _repr_fields(self) -> dict[str, Any]:
        return {}

    # -- the RewardBackend interface -----------------------------------------------------------

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Judge each (prompt, response) with the rubric. Items without a parsed score get what
        on_unparsed says and valid=False; raises JudgeFailed when the judge cannot give a signal."""
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

        results, outcomes, first_failure = self._run_calls([g[0] for g in groups])
        for (text, items), value in zip(groups, results, strict=True):
            if value is not None and self.cache:
                self._cache_put(text, value)
            for i in items:
                values[i] = value

        self._count_failed_step(values, outcomes, first_failure)
        ok = [v is not None for v in values]
        scores = self._fill_unparsed(prompts, values)
        return RewardResult(scores=scores, raw={f"{self.name}/score": list(scores),
                                                f"{self.name}/parse_ok": [1.0 if o else 0.0 for o in ok]},
                            valid=ok)

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

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets())

    def _fill_unparsed(self, prompts: list[str], values: list[float | None]) -> list[float]:
        """Scores for every item: parsed ones as they are, the others by on_unparsed."""
        if self.on_unparsed == "worst":
            return [self.worst if v is None else v for v in values]
        parsed = [v for v in values if v is not None]
        batch_mean = sum(parsed) / len(parsed) if parsed else self.rubric.midpoint  # no signal either way
        by_prompt: dict[str, list[float]] = {}
        for p, v in zip(prompts, values, strict=True):
            if v is not None:
                by_prompt.setdefault(p, []).append(v)
        out = []
        for p, v in zip(prompts, values, strict=True):
            if v is None:
                same = by_prompt.get(p)
                v = sum(same) / len(same) if same else batch_mean
            out.append(v)
        return out

    def _count_failed_step(self, values: list[float | None], outcomes: Counter[str], first: str | None) -> None:
        """A batch with items and not one parsed score is a failing step; max_failed_steps in a row stop the run."""
        if not values or any(v is not None for v in values):
            self._failed_steps = 0
            self._failed_reasons.clear()
            return
        self._failed_steps += 1
        self._failed_reasons.update(outcomes)
        if self._failed_steps >= self.max_failed_steps:
            calls = sum(self._failed_reasons.values())
            why = ", ".join(f"{n} {k}" for k, n in self._failed_reasons.most_common())
            raise JudgeFailed(f"judge {self.name!r} ({self.model_id}): {self._failed_steps} consecutive batches "
                              f"without one parsed score ({calls} calls failed: {why}); last: {first} "
                              f"(max_failed_steps: {self.max_failed_steps})")

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
        if call.cancel.is_set() or time.monotonic() >= call.deadline:  # expired in the queue: never sent
            raise JudgeCallError("deadline passed before a worker was free")
        call.start = time.monotonic()
        self._tls.cancel, self._tls.deadline = call.cancel, call.deadline
        try:
            reply = self._call_one(call.text)
        except JudgeCallError as e:
            self.accounting.add_usage(0, 0, e.retries)
            raise
        finally:
            call.end = time.monotonic()
            self._tls.cancel = self._tls.deadline = None
        self.accounting.add_usage(reply.input_tokens, reply.output_tokens, reply.retries)
        return reply

    def _outcome(self, reply: JudgeReply) -> tuple[float | None, str, str | None]:
        """(parsed score or None, accounting outcome, failure text) of one reply."""
        if reply.stop == "max_tokens":
            return None, "truncated", f"reply cut at max_tokens ({self.max_tokens}): {reply.text[:80]!r}"
        if reply.stop == "refused":
            return None, "parse_failure", f"the model refused (stop reason): {reply.text[:80]!r}"
        low, high = self.score_range
        value = parse_score(reply.text, low, high)
        if value is None:
            return None, "parse_failure", f"no unambiguous score in [{low:g}, {high:g}] in {reply.text[:80]!r}"
        return value, "ok", None

    def _run_calls(self, texts: list[str]) -> tuple[list[float | None], Counter[str], str | None]:
        """Parsed score per text (None = none), the outcome counts and the first failure (redacted).

        Every call gets timeout_s from its submission, queue time included: a call still queued at its
        deadline is never sent, a running one stops before its next retry. An authentication error
        cancels the rest and raises JudgeFailed."""
        submitted = time.monotonic()
        deadline = submitted + self.timeout_s
        calls = [_Call(t, deadline) for t in texts]
        results: list[float | None] = [None] * len(calls)
        outcomes: Counter[str] = Counter()
        failures: list[str] = []
        pending: dict[Future, int] = {self._pool.submit(self._work, c): i for i, c in enumerate(calls)}
        try:
            while pending:
                done, _ = wait(list(pending), timeout=max(deadline - time.monotonic(), 0.0),
                               return_when=FIRST_COMPLETED)
                if not done:
                    break  # the deadline passed
                for fut in done:
                    i = pending.pop(fut)
                    call = calls[i]
                    latency = (call.end or time.monotonic()) - (call.start or submitted)
                    try:
                        reply = fut.result()
                    except JudgeAuthError as e:
                        self.accounting.record_call(latency, "error")
                        raise JudgeFailed(self._redact(
                            f"judge {self.name!r} ({self.model_id}): the endpoint refused the credentials: "
                            f"{str(e)[:_MESSAGE_CHARS]}")) from None
                    except Exception as e:  # JudgeCallError or anything a client raised: a failed item
                        # A call whose own deadline fired just before the batch's is the same timeout.
                        kind = "timeout" if getattr(e, "timed_out", False) else "error"
                        self.accounting.record_call(latency, kind)
                        outcomes[kind + "s"] += 1
                        failures.append(self._redact(f"{type(e).__name__}: {str(e)[:_MESSAGE_CHARS]}"))
                        continue
                    value, outcome, why = self._outcome(reply)
                    self.accounting.record_call(latency, outcome)
                    if why:
                        outcomes[{"truncated": "cut at max_tokens", "parse_failure": "unparsed"}[outcome]] += 1
                        failures.append(self._redact(why))
                    results[i] = value
        finally:
            # Calls still pending (deadline passed, or an auth error stopped the batch): abandon them.
            for fut, i in pending.items():
                calls[i].cancel.set()  # a running call stops before its next attempt
                fut.cancel()  # a queued one is never sent
        now = time.monotonic()
        for i in pending.values():
            self.accounting.record_call(now - submitted, "timeout")
            outcomes["timeouts"] += 1
            where = "queued" if calls[i].start is None else "running"
            failures.append(f"timed out after {self.timeout_s:g}s from submission ({where})")
        if failures:
            log.warning("judge %s: %d of %d calls gave no score (%s; first: %s)", self.name, len(failures),
                        len(calls), ", ".join(f"{n} {k}" for k, n in outcomes.items()), failures[0])
        return results, outcomes, failures[0] if failures else None
