"""The Live page's words and numbers (app.live_view): plain-language phases, durations, a stable ETA."""

from __future__ import annotations

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


def test_signature_ignores_the_heartbeat_but_not_new_rows_or_phase():
    a = live_view.signature("running", "train", "step 1/5", 1, None, 10, False)
    assert a == live_view.signature("running", "train", "step 1/5", 1, None, 10, False)
    assert a != live_view.signature("running", "train", "step 1/5", 1, None, 11, False)
    assert a != live_view.signature("running", "eval_after", "step 1/5", 1, None, 10, False)
    assert a != live_view.signature("running", "train", "step 1/5", 1, None, 10, True)
