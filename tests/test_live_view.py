"""The Live page's words and numbers (app.live_view): plain-language phases, durations, a stable ETA."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from app import live_view


def test_phases_in_plain_language():
    assert live_view.phase_text("running", "eval_before", "evaluating before: 120/800 responses") == \
        "Evaluating the base model: 120/800 responses"
    assert live_view.phase_text("running", "eval_after", "evaluating after: 3/16 responses") == \
        "Evaluating the trained model: 3/16 responses"
    assert live_view.phase_text("running", "train", "step 5/28", 5, 28) == "Training: step 5 of 28"
    load = live_view.phase_text("running", "load", "loading the reward backends, the evaluator and the policy")
    assert load.startswith("Loading the reward models") and "first use" in load
    assert live_view.phase_text("queued", "queued", "") .startswith("Queued")
    assert live_view.phase_text("cancelled", "cancelled", "") == "Cancelled"
    for phase in ("eval_before", "eval_after", "load", "train", "save", "label"):  # no raw phase names
        assert phase not in live_view.phase_text("running", phase, "x 1/2", 1, 2)


def test_durations():
    assert live_view.fmt_duration(None) == "—"
    assert live_view.fmt_duration(42) == "42 s"
    assert live_view.fmt_duration(185) == "3 min 05 s"
    assert live_view.fmt_duration(3720) == "1 h 02 min"


def test_eta_is_a_median_so_one_slow_step_does_not_swing_it():
    steady = [2.0] * 19
    assert live_view.stable_eta(steady, 10, 30) == 40.0
    assert live_view.stable_eta(steady + [120.0], 10, 30) == 40.0  # a checkpoint step; a mean would say 158 s
    assert live_view.stable_eta([], 10, 30) is None and live_view.stable_eta([2.0], 10, None) is None
    assert live_view.fmt_eta(None) == "ETA —"
    assert live_view.fmt_eta(3725) == "ETA ~1 h 02 min"
    assert live_view.fmt_eta(14) == "ETA ~15 s"


def test_load_phase_says_what_it_loads_and_that_a_first_use_takes_minutes():
    first = live_view.phase_text("running", "load", "building the built-in tiny model (first use only; about 4 "
                                 "minutes on 2 idle CPU cores)")
    assert first.startswith("Loading: building the built-in tiny model") and "minutes" in first
    assert live_view.phase_text("running", "load", "loading the policy gpt2") == "Loading: the policy gpt2"
    assert live_view.phase_text("running", "load", "resuming from the checkpoint after step 3") == \
        "Resuming: from the checkpoint after step 3"


def _lines(rows):
    return pd.DataFrame(rows, columns=["time", "level", "phase", "message"])


def test_log_text_marks_warnings_and_keeps_multiline_messages():
    t = datetime(2026, 12, 2, 5, 0, 7, tzinfo=timezone.utc)
    text = live_view.log_text(_lines([(t, "info", "load", "loading the policy"),
                                      (t + timedelta(seconds=3), "warning", "load", "slow disk\nsecond line"),
                                      (t + timedelta(seconds=4), "error", "train", "failed: boom")]))
    assert text.splitlines() == ["05:00:07  loading the policy", "05:00:10  WARNING slow disk",
                                 "          second line", "05:00:11  ERROR failed: boom"]


def test_phase_seconds_counts_from_the_first_line_of_the_current_phase():
    t = datetime(2026, 12, 2, 5, 0, 0, tzinfo=timezone.utc)
    lines = _lines([(t, "info", "load", "a"), (t + timedelta(seconds=10), "info", "eval_before", "b"),
                    (t + timedelta(seconds=40), "info", "eval_before", "c")])
    assert live_view.phase_seconds(lines, "eval_before", t + timedelta(seconds=70)) == 60.0
    assert live_view.phase_seconds(lines, "train", t + timedelta(seconds=70)) is None  # not logged yet
    assert live_view.phase_seconds(_lines([]), "load", t) is None
