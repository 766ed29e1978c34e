"""The CLI's progress bars tell the truth: evaluation counts responses, every bar starts at 0 when its phase starts
(so its rate and ETA count from there), and a resumed run's earlier steps do not count toward the rate."""

import io

from engine.__main__ import ProgressBars
from engine.config import RewardBackendSettings, RunConfig
from engine.progress import Progress
from engine.runner import run
from engine.store import Store


def test_evaluation_bar_counts_responses_from_zero():
    out = io.StringIO()
    bars = ProgressBars(file=out)
    bars(Progress("eval_before", 0, 800, "evaluating before: 0/800 responses", unit="response"))
    bar = bars.bars["eval_before"]
    assert bar.n == 0 and bar.unit == "response" and bar.smoothing == 0
    assert bar.format_dict["initial"] == 0
    bars(Progress("eval_before", 48, 800, unit="response"))
    text = out.getvalue()
    assert "0/800" in text and "48/800" in text and "response" in text and "prompt" not in text
    # an old-style report without a unit still gets the phase's unit
    bars(Progress("eval_after", 0, 8))
    assert bars.bars["eval_after"].unit == "response"
    bars(Progress("train", 3, 28, unit="step"))  # a resumed run: 3 steps done by an earlier process
    assert bars.bars["train"].format_dict["initial"] == 3 and bars.bars["train"].n == 3


def test_a_run_reports_each_phase_from_zero(tiny_gpt2_dir, tmp_path):
    cfg = RunConfig(name="tiny-progress")
    cfg.model.name_or_path = str(tiny_gpt2_dir)
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 4, 2
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 2, 2, "none"
    cfg.generation.max_new_tokens, cfg.generation.min_length = 4, 2
    cfg.data.source, cfg.data.holdout_size, cfg.data.validation_size = "builtin", 3, 0
    cfg.evaluation.batch_size, cfg.evaluation.relevance = 4, False
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 10
    cfg.checkpoint.every_steps = 0
    cfg.output_dir = str(tmp_path / "out")
    seen: list[Progress] = []
    run(cfg, Store(tmp_path / "runs.db"), on_progress=seen.append)
    for phase, total, unit in (("eval_before", 6, "response"), ("train", 2, "step"), ("eval_after", 6, "response")):
        events = [(p.done, p.total, p.unit) for p in seen if p.phase == phase]
        assert events[0] == (0, total, unit), phase  # the phase's start, before any work
        assert events[-1][0] == total
    evals = [p.done for p in seen if p.phase == "eval_before"]
    assert evals == [0, 4, 6]  # responses: 2 prompts x 2 per batch of 4, then the last prompt's 2
