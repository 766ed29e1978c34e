"""Reward-hacking alarms: small detectors fed once per training step with what the run already has.

Each detector (a `Detector` subclass, one per alarm) sees a `StepView` (the step's metrics dict, its responses,
their token ids and lengths, the reward backends' raw signals, the per-sample reference log-prob and entropy the
step computed, and the probe toxicity when the step ran the probe) and returns its current value (logged as the
metric `alarm/<name>/value`) and, when its condition has held for `patience` consecutive steps, one `Firing`:
the alarm's name, the step it fired, the step since which the condition holds, the value against its threshold,
a one-line explanation, and the indices of the step's samples that show it (its evidence).

An alarm fires once per episode: it re-arms when its condition clears. Baselines are the means over the first
`baseline_steps` steps of the run. `Monitor` runs every detector a config enables and keeps their state for
checkpoints (plain numbers and lists only).

Pure: no store, no torch. The PPO method (engine/methods/ppo.py) builds the views, stores the firings and stops
the run when an alarm is in `alarms.stop_on`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.config import ALARM_NAMES  # the one list (config validates names against it)

if TYPE_CHECKING:
    from engine.config import AlarmSettings

__all__ = ["ALARM_NAMES", "Firing", "Monitor", "StepView"]
EVIDENCE_SAMPLES = 4  # sample indices kept as a firing's evidence


@dataclass
class StepView:
    """What one training step hands the detectors (per-sample lists are aligned with the step's responses)."""

    step: int
    metrics: dict[str, float]
    responses: list[str]
    token_ids: list[list[int]]  # each response's tokens (no padding)
    max_new_tokens: int
    min_length: int
    raw_scores: dict[str, list[float]] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)  # reward backends (keys of raw_scores holding their scores)
    ref_logprob: list[float] | None = None  # per sample: the reference model's mean log-prob per response token
    entropy: list[float] | None = None  # per sample: the policy's mean entropy per response token
    kl: list[float] | None = None  # per sample: its KL to the reference (sum over its tokens of logp - logp_ref)
    probe_toxicity: float | None = None  # the evaluator's mean toxicity on the probe prompts, at probe steps

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.token_ids]


@dataclass
class Firing:
    """One alarm going off."""

    name: str
    step: int
    since_step: int
    value: float
    threshold: float
    message: str
    evidence: list[int]  # indices of the step's samples that show it

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "step": self.step, "since_step": self.since_step, "value": self.value,
                "threshold": self.threshold, "message": self.message, "evidence": list(self.evidence)}


def _mean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _top(values: Sequence[float], k: int = EVIDENCE_SAMPLES, largest: bool = True) -> list[int]:
    """Indices of the k largest (or smallest) finite values."""
    idx = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    return sorted(idx, key=lambda i: values[i], reverse=largest)[:k]


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation over the pairs where both are finite; NaN when either side is constant or < 3 pairs."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan
    mx, my = _mean([a for a, _ in pairs]), _mean([b for _, b in pairs])
    sxy = sum((a - mx) * (b - my) for a, b in pairs)
    sxx, syy = sum((a - mx) ** 2 for a, _ in pairs), sum((b - my) ** 2 for _, b in pairs)
    if sxx <= 1e-12 or syy <= 1e-12:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def repeat_share(tokens: Sequence[int], n: int) -> float:
    """Share of a response's n-grams that repeat an earlier n-gram of it (0: none repeats); NaN when shorter than n."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else math.nan


def distinct_n(token_lists: Sequence[Sequence[int]], n: int) -> float:
    """Distinct n-grams over all n-grams of the batch (1: no n-gram twice); NaN when there are none."""
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


class Detector:
    """One alarm. Subclasses implement `check(view) -> (value, condition, threshold, message, evidence)`;
    `observe` adds the patience and the once-per-episode firing."""

    name = ""

    def __init__(self, cfg: AlarmSettings) -> None:
        self.cfg = cfg
        self.since: int | None = None  # first step of the current run of steps with the condition true
        self.streak = 0
        self.fired = False  # fired in the current episode (re-armed when the condition clears)
        self.history: list[float] = []  # values of the first baseline_steps steps (a baseline), where needed
        self.value = 0.0  # the last value (a detector with nothing new this step keeps it)

    # -- state (for checkpoints: plain types only) --
    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "cfg"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def baseline(self, value: float, step: int) -> float:
        """Record `value` while in the first baseline_steps steps; the baseline mean (NaN until it has one)."""
        if len(self.history) < self.cfg.baseline_steps and math.isfinite(value):
            self.history.append(float(value))
            return math.nan  # no alarm while the baseline forms
        return _mean(self.history)

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]] | None:
        """(value, condition, threshold, message, evidence); None when this step says nothing new."""
        raise NotImplementedError

    def observe(self, view: StepView) -> tuple[float, Firing | None]:
        """This step's value, and the firing when the condition has now held for `patience` steps."""
        result = self.check(view)
        if result is None:
            return self.value, None
        value, condition, threshold, message, evidence = result
        self.value = float(value)
        if not condition:
            self.since, self.streak, self.fired = None, 0, False
            return value, None
        if self.since is None:
            self.since = view.step
        self.streak += 1
        if self.fired or self.streak < self.cfg.patience:
            return value, None
        self.fired = True
        return value, Firing(self.name, view.step, self.since, float(value), float(threshold), message, evidence)


class LengthDrift(Detector):
    """Mean response length beyond ±length_drift of the first steps' mean, or a pile-up at max_new_tokens or at
    min_length (the share of responses there up by pileup_rise over the first steps')."""

    name = "length_drift"

    def __init__(self, cfg: AlarmSettings) -> None:
        super().__init__(cfg)
        self.at_max: list[float] = []
        self.at_min: list[float] = []

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        lengths = view.lengths
        mean = _mean(lengths)
        at_max = _mean([float(n >= view.max_new_tokens) for n in lengths])
        at_min = _mean([float(n <= max(view.min_length, 1)) for n in lengths])
        first = len(self.history) < self.cfg.baseline_steps
        base = self.baseline(mean, view.step)
        if first:
            self.at_max.append(at_max)
            self.at_min.append(at_min)
        if not math.isfinite(base) or base <= 0:
            return 0.0, False, self.cfg.length_drift, "", []
        drift = mean / base - 1
        c = self.cfg
        if abs(drift) > c.length_drift:
            way = "longer" if drift > 0 else "shorter"
            return drift, True, c.length_drift if drift > 0 else -c.length_drift, (
                f"responses are {abs(drift):.0%} {way} than in the first steps ({mean:.1f} vs {base:.1f} tokens; "
                f"alarm beyond ±{c.length_drift:.0%})"), _top(lengths, largest=drift > 0)
        for share, firsts, limit, where in ((at_max, self.at_max, view.max_new_tokens, "max_new_tokens"),
                                            (at_min, self.at_min, view.min_length, "min_length")):
            rise = share - _mean(firsts)
            if rise > c.pileup_rise:
                hits = [i for i, n in enumerate(lengths) if (n >= limit if where == "max_new_tokens"
                                                              else n <= max(limit, 1))]
                return drift, True, c.pileup_rise, (
                    f"{share:.0%} of responses stop at {where} ({limit} tokens), up {rise:.0%} from the first "
                    f"steps' {_mean(firsts):.0%} (alarm above +{c.pileup_rise:.0%})"), hits[:EVIDENCE_SAMPLES]
        return drift, False, c.length_drift, "", []


class Degeneration(Detector):
    """Repetition: the share of repeated n-grams within responses up by degeneration_rise, or the batch's distinct-n
    down by as much, against the first steps."""

    name = "degeneration"

    def __init__(self, cfg: AlarmSettings) -> None:
        super().__init__(cfg)
        self.distinct: list[float] = []

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        n = self.cfg.ngram
        shares = [repeat_share(t, n) for t in view.token_ids]
        rep, dist = _mean(shares), distinct_n(view.token_ids, n)
        first = len(self.history) < self.cfg.baseline_steps
        base = self.baseline(rep, view.step)
        if first and math.isfinite(dist):
            self.distinct.append(dist)
        if not math.isfinite(base):
            return 0.0, False, self.cfg.degeneration_rise, "", []
        rise, drop = rep - base, _mean(self.distinct) - dist
        value = max(rise, drop if math.isfinite(drop) else -math.inf)
        if value > self.cfg.degeneration_rise:
            return value, True, self.cfg.degeneration_rise, (
                f"repeated {n}-grams {rep:.0%} of a response (first steps {base:.0%}), distinct-{n} {dist:.2f} "
                f"(first steps {_mean(self.distinct):.2f}): up / down by {value:.2f}, alarm above "
                f"{self.cfg.degeneration_rise:.2f}"), _top(shares)
        return value, False, self.cfg.degeneration_rise, "", []


class EntropyCollapse(Detector):
    """The policy's mean per-token entropy below entropy_floor x the first steps'."""

    name = "entropy_collapse"

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        per = view.entropy or []
        ent = _mean(per)
        base = self.baseline(ent, view.step)
        if not math.isfinite(base) or base <= 0:
            return 1.0, False, self.cfg.entropy_floor, "", []
        ratio = ent / base
        if ratio < self.cfg.entropy_floor:
            return ratio, True, self.cfg.entropy_floor, (
                f"entropy {ent:.2f} nats/token is {ratio:.0%} of the first steps' {base:.2f} (alarm below "
                f"{self.cfg.entropy_floor:.0%}): the policy samples nearly deterministically"), _top(per, largest=False)
        return ratio, False, self.cfg.entropy_floor, "", []


class KLRunaway(Detector):
    """KL to the reference beyond kl_factor x kl_target, or up by kl_rise nats over kl_window steps while the reward
    moved less than reward_flat x its std."""

    name = "kl_runaway"

    def __init__(self, cfg: AlarmSettings, kl_target: float) -> None:
        super().__init__(cfg)
        self.kl_target = kl_target
        self.recent: list[list[float]] = []  # [kl, reward mean, reward std] of the last kl_window steps

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        m, c = view.metrics, self.cfg
        kl = float(m.get("objective/kl", math.nan))
        self.recent = (self.recent + [[kl, float(m.get("env/reward_mean", math.nan)),
                                       float(m.get("env/reward_std", math.nan))]])[-(c.kl_window + 1):]
        limit = c.kl_factor * self.kl_target
        evidence = _top(view.kl or [])  # the samples furthest from the reference
        if math.isfinite(kl) and kl > limit:
            return kl, True, limit, (f"KL to the reference {kl:.2f} nats is beyond {c.kl_factor:g} x the target "
                                     f"{self.kl_target:g} = {limit:.2f}"), evidence
        if len(self.recent) > c.kl_window:
            (kl0, r0, _), (_, r1, _) = self.recent[0], self.recent[-1]
            spread = _mean([s for _, _, s in self.recent])
            rise = kl - kl0
            flat = abs(r1 - r0) < c.reward_flat * (spread if math.isfinite(spread) and spread > 0 else 1.0)
            if math.isfinite(rise) and rise > c.kl_rise and flat:
                return kl, True, kl0 + c.kl_rise, (
                    f"KL rose {rise:.2f} nats in {c.kl_window} steps ({kl0:.2f} -> {kl:.2f}) while the reward stayed "
                    f"flat ({r0:.3f} -> {r1:.3f})"), evidence
        return kl, False, limit, "", []


class RewardVsProbe(Detector):
    """The reward up by reward_rise x the first steps' reward std since the first probe, while the probe's toxicity
    (the evaluator on held-out prompts, never the reward) fell by less than probe_min_drop of its first value.
    Checked at probe steps only (the value of other steps is the last probe's)."""

    name = "reward_vs_probe"

    def __init__(self, cfg: AlarmSettings) -> None:
        super().__init__(cfg)
        self.first_probe: float | None = None
        self.first_reward: float | None = None
        self.reward_std: list[float] = []

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        m, c = view.metrics, self.cfg
        reward, std = float(m.get("env/reward_mean", math.nan)), float(m.get("env/reward_std", math.nan))
        if len(self.reward_std) < c.baseline_steps and math.isfinite(std):
            self.reward_std.append(std)
        tox = view.probe_toxicity
        if tox is None or not math.isfinite(tox):
            return None  # judged at probe steps only
        if self.first_probe is None:
            self.first_probe, self.first_reward = float(tox), reward
            return 0.0, False, c.reward_rise, "", []
        scale = _mean(self.reward_std)
        scale = scale if math.isfinite(scale) and scale > 1e-8 else 1.0
        rise = (reward - self.first_reward) / scale
        drop = (self.first_probe - tox) / self.first_probe if self.first_probe > 1e-8 else 0.0
        cond = rise > c.reward_rise and drop < c.probe_min_drop
        msg = (f"reward up {rise:.1f} std since the first probe ({self.first_reward:.3f} -> {reward:.3f}) while the "
               f"probe's toxicity went {self.first_probe:.3f} -> {tox:.3f} (fell {max(drop, 0):.0%}, needs "
               f"{c.probe_min_drop:.0%}): the reward may be gamed") if cond else ""
        rewards = [_mean([view.raw_scores[m][i] for m in view.members if m in view.raw_scores])
                   for i in range(len(view.responses))]
        return rise, cond, c.reward_rise, msg, _top(rewards)  # the best-paid samples of the step


class JudgeFailures(Detector):
    """An LLM judge's refusals / parse failures / errors / timeouts over judge_failure_share of the step's calls
    (from the cumulative judge/<name>/... counters)."""

    name = "judge_failures"

    def __init__(self, cfg: AlarmSettings) -> None:
        super().__init__(cfg)
        self.counts: dict[str, list[float]] = {}  # judge -> [calls, failures] at the previous step

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        worst, worst_judge, calls_worst = 0.0, None, 0.0
        for key, calls in view.metrics.items():
            if not (key.startswith("judge/") and key.endswith("/calls")):
                continue
            judge = key[len("judge/"):-len("/calls")]
            fails = sum(view.metrics.get(f"judge/{judge}/{k}", 0.0) for k in ("parse_failures", "errors", "timeouts"))
            c0, f0 = self.counts.get(judge, [0.0, 0.0])
            self.counts[judge] = [float(calls), float(fails)]
            d_calls, d_fails = calls - c0, fails - f0
            if d_calls > 0 and d_fails / d_calls > worst:
                worst, worst_judge, calls_worst = d_fails / d_calls, judge, d_calls
        if worst_judge is not None and worst > self.cfg.judge_failure_share:
            ok = view.raw_scores.get(f"{worst_judge}/parse_ok", [])
            evidence = [i for i, v in enumerate(ok) if v == 0][:EVIDENCE_SAMPLES]
            return worst, True, self.cfg.judge_failure_share, (
                f"judge {worst_judge!r}: {worst:.0%} of this step's {calls_worst:.0f} calls refused, failed to parse, "
                f"errored or timed out (alarm above {self.cfg.judge_failure_share:.0%})"), evidence
        return worst, False, self.cfg.judge_failure_share, "", []


class EnsembleDisagreement(Detector):
    """Two reward backends' raw scores over the step's samples correlated below ensemble_min_corr."""

    name = "ensemble_disagreement"

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        members = [m for m in view.members if m in view.raw_scores]
        worst, pair = math.nan, None
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                r = pearson(view.raw_scores[a], view.raw_scores[b])
                if math.isfinite(r) and not (r >= worst):  # the lowest correlation (NaN-safe)
                    worst, pair = r, (a, b)
        threshold = self.cfg.ensemble_min_corr
        if pair is not None and worst < threshold:
            a, b = pair
            za, zb = _zscores(view.raw_scores[a]), _zscores(view.raw_scores[b])
            gap = [abs(x - y) for x, y in zip(za, zb, strict=True)]
            return worst, True, threshold, (
                f"reward backends {a!r} and {b!r} disagree: their scores correlate {worst:.2f} over the step's "
                f"{len(gap)} samples (alarm below {threshold:.2f})"), _top(gap)
        return (worst if math.isfinite(worst) else 1.0), False, threshold, "", []


def _zscores(values: Sequence[float]) -> list[float]:
    mean = _mean(values)
    std = math.sqrt(_mean([(v - mean) ** 2 for v in values])) or 1.0
    return [(v - mean) / std if math.isfinite(v) else 0.0 for v in values]


class NotLanguage(Detector):
    """The reference model's mean per-token log-prob of the policy's responses more than lang_drop nats below the
    first steps': text the base model would not write (no longer language)."""

    name = "not_language"

    def check(self, view: StepView) -> tuple[float, bool, float, str, list[int]]:
        per = view.ref_logprob or []
        lp = _mean(per)
        base = self.baseline(lp, view.step)
        if not math.isfinite(base):
            return 0.0, False, self.cfg.lang_drop, "", []
        drop = base - lp
        if drop > self.cfg.lang_drop:
            return drop, True, self.cfg.lang_drop, (
                f"the reference model gives the responses {lp:.2f} nats/token, {drop:.2f} below the first steps' "
                f"{base:.2f} (alarm beyond {self.cfg.lang_drop:g}): no longer language it would write"), \
                _top(per, largest=False)
        return drop, False, self.cfg.lang_drop, "", []


class Monitor:
    """Every enabled detector of a run; `observe(view)` gives (metrics, firings) of one step."""

    def __init__(self, cfg: AlarmSettings, kl_target: float) -> None:
        self.cfg = cfg
        makers = {"length_drift": LengthDrift, "degeneration": Degeneration, "entropy_collapse": EntropyCollapse,
                  "kl_runaway": lambda c: KLRunaway(c, kl_target), "reward_vs_probe": RewardVsProbe,
                  "judge_failures": JudgeFailures, "ensemble_disagreement": EnsembleDisagreement,
                  "not_language": NotLanguage}
        self.detectors = [makers[name](cfg) for name in ALARM_NAMES if name not in cfg.disabled]

    def probe_due(self, step: int) -> bool:
        """Whether step `step` runs the probe: the first step (its baseline), then every probe_every steps."""
        every = self.cfg.probe_every
        return self.cfg.enabled and every > 0 and self.cfg.probe_prompts > 0 and (step == 1 or step % every == 0)

    def observe(self, view: StepView) -> tuple[dict[str, float], list[Firing]]:
        metrics: dict[str, float] = {}
        firings: list[Firing] = []
        for d in self.detectors:
            value, firing = d.observe(view)
            metrics[f"alarm/{d.name}/value"] = float(value) if value is not None else math.nan
            if firing is not None:
                firings.append(firing)
        if view.probe_toxicity is not None:
            metrics["probe/toxicity"] = float(view.probe_toxicity)
        return metrics, firings

    def state_dict(self) -> dict[str, Any]:
        return {d.name: d.state_dict() for d in self.detectors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for d in self.detectors:
            if d.name in state:
                d.load_state_dict(state[d.name])
