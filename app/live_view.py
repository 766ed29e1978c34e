"""What the Live page says about a run, as pure functions: the phase in plain language, elapsed time, a stable
ETA, the run's stored log as text and how long its phase has lasted.

Not responsible for: reading the store or drawing (pages/live.py does both), or the watch signature
(engine.api.watch_signature).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence

_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")

STATUS_TEXT = {
    "queued": "Queued: waiting for a worker to take it",
    "completed": "Completed",
    "cancelled": "Cancelled",
    "failed": "Failed",
    "interrupted": "Interrupted: its process stopped before it finished",
}


def _count(message: str) -> str:
    m = _COUNT.search(message or "")
    return f": {m.group(1)}/{m.group(2)} responses" if m else ""


def phase_text(status: str, phase: str, message: str, step: int = 0, total: int | None = None) -> str:
    """One plain-language line: "Evaluating the base model: 120/800 responses", "Training: step 5 of 28"."""
    if status != "running":
        return STATUS_TEXT.get(status, status.capitalize())
    message = message or ""
    if phase == "eval_before":
        return "Evaluating the base model" + _count(message)
    if phase == "eval_after":
        return "Evaluating the trained model" + (_count(message) or (f": {message}" if message else ""))
    if phase == "train":
        return f"Training: step {step} of {total}" if total else "Training" + (f": {message}" if message else "")
    if phase == "load":
        if message.startswith("resuming"):
            return f"Resuming: {message[9:]}"
        if message.startswith(("building", "converting")):  # a built-in model's first use: say it takes minutes
            return "Loading: " + message
        if message.startswith("loading the") and message != "loading the reward backends, the evaluator and the policy":
            return "Loading: " + message[len("loading "):]
        return ("Loading the reward models, the evaluator and the policy (a built-in tiny model is built on first "
                "use, which takes minutes)")
    fixed = {"starting": "Starting: the worker took the run", "data": "Loading the prompts and data",
             "save": "Saving the trained policy", "done": "Finishing", "label": "Labelling response pairs with AI "
             "feedback"}
    if phase in fixed:
        count = _COUNT.search(message)
        return fixed[phase] + (f": {count.group(1)}/{count.group(2)}" if count and phase == "label" else "")
    return f"{phase}: {message}" if message else phase


def fmt_duration(seconds: float | None) -> str:
    """"42 s", "3 min 05 s", "1 h 02 min"; "—" when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def stable_eta(step_times: Sequence[float], step: int, total: int | None) -> float | None:
    """Seconds left: the median of the stored step times (the last ~20 of the phase) × the steps to go. A median
    ignores the odd slow step (a checkpoint, a judge timeout), so the ETA does not swing; None when unknown."""
    times = [float(t) for t in step_times if t is not None and t == t and t >= 0]
    if not total or not times:
        return None
    return max(total - step, 0) * statistics.median(times)


def fmt_eta(seconds: float | None) -> str:
    """Rounded so it does not flicker: to 5 s under 2 min, to the minute above."""
    if seconds is None:
        return "ETA —"
    if seconds < 120:
        return f"ETA ~{fmt_duration(5 * round(seconds / 5))}"
    return f"ETA ~{fmt_duration(60 * round(seconds / 60))}"


def log_text(lines) -> str:
    """A run's stored log lines (a frame with time, level, phase, message) as text: "12:03:07  message", warnings
    and errors marked, a multi-line message indented under its time."""
    out = []
    for t, level, message in zip(lines["time"], lines["level"], lines["message"], strict=True):
        stamp = t.strftime("%H:%M:%S") if hasattr(t, "strftime") else "--:--:--"
        mark = {"warning": "WARNING ", "error": "ERROR "}.get(level, "")
        first, *rest = str(message).splitlines() or [""]
        out.append(f"{stamp}  {mark}{first}")
        out += [f"          {r}" for r in rest]
    return "\n".join(out)


def phase_seconds(lines, phase: str, now) -> float | None:
    """Seconds since the run entered `phase`: the first of the newest lines that belong to it (None: unknown)."""
    if lines is None or len(lines) == 0 or not phase:
        return None
    phases = list(lines["phase"])
    if phases[-1] != phase:
        return None
    i = len(phases) - 1
    while i > 0 and phases[i - 1] == phase:
        i -= 1
    start = lines["time"].iloc[i]
    return max((now - start).total_seconds(), 0.0) if hasattr(start, "tzinfo") else None
