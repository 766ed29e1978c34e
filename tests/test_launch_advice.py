"""The Launch form's advice: warnings for legal but unwise values, and the duration estimate's arithmetic."""

from __future__ import annotations

import pytest

from app import launch_advice as la
from engine.config import RunConfig
from engine.presets import preset


def fields(cfg: RunConfig, on_gpu: bool = False) -> set[str]:
    return {w.field for w in la.warnings(cfg, on_gpu)}


def test_the_measured_default_gets_no_warning():
    assert la.warnings(RunConfig()) == []


def test_a_small_holdout_is_warned_about_only_when_evaluating():
    cfg = RunConfig()
    cfg.data.holdout_size = 16
    assert "data.holdout_size" in fields(cfg)
    cfg.data.holdout_size = 200
    assert "data.holdout_size" not in fields(cfg)
    cfg.data.holdout_size, cfg.evaluation.enabled = 16, False
    assert "data.holdout_size" not in fields(cfg)


def test_kl_zero_without_adaptation_and_long_cpu_runs():
    cfg = RunConfig()
    cfg.ppo.init_kl_coef = 0.0
    assert "ppo.init_kl_coef" in fields(cfg)
    cfg.ppo.adaptive_kl = True
    assert "ppo.init_kl_coef" not in fields(cfg)
    cfg.ppo.max_ppo_steps = 500
    assert "ppo.max_ppo_steps" in fields(cfg) and "ppo.max_ppo_steps" not in fields(cfg, on_gpu=True)


def test_the_estimate_reproduces_the_measured_default_and_scales():
    assert la.estimate_s(RunConfig()) == pytest.approx(la.DEFAULT_RUN_S) == pytest.approx(728)  # README's run
    cfg = RunConfig()
    cfg.ppo.max_ppo_steps *= 2
    assert la.estimate_s(cfg) == pytest.approx(728 + 28 * la.STEP_S)
    cfg = RunConfig()
    cfg.ppo.batch_size = 64
    assert la.estimate_s(cfg) == pytest.approx(728 + 28 * la.STEP_S)
    assert la.estimate_s(preset("tour")) < la.estimate_s(RunConfig()) / 5
    assert la.estimate_s(RunConfig(method="dpo")) is None
    cfg = RunConfig()
    cfg.ppo.focus = 0.5  # the rating pass: 408 training prompts x 2 base responses, at evaluation's pace
    assert la.estimate_s(cfg) == pytest.approx(728 + 408 * 2 * la.EVAL_RESPONSE_S)
    assert la.duration_text(1422) == "about 24 min" and la.duration_text(4200) == "about 1 h 10 min"


def test_the_note_says_it_is_an_estimate_and_what_a_gpu_means():
    assert "an estimate" in la.estimate_note(RunConfig(), "cpu")
    assert "not measured" in la.estimate_note(RunConfig(), "cuda")
