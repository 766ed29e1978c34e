"""The TRL → store callback: every log dict reaches a real SQLite store under the method's namespace, and a
cancellation request stops a real TRL training run within one step (the run is then marked cancelled)."""

import math
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from engine.checkpoint import is_resumable
from engine.config import RewardBackendSettings, RunConfig
from engine.methods.callbacks import StoreCallback, store_metrics
from engine.runner import execute
from engine.store import Store


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models train faster on one thread, and leave the shared cores alone (the GRPO toy test: 4 s instead of
    20 s on 2 busy cores)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_store_metrics_namespaces_maps_and_drops_non_numbers():
    logs = {"reward": 0.5, "kl": 0.01, "eval_loss": 0.3, "completions": "a table", "flag": True, "step_time": 2}
    out = store_metrics(logs, "grpo/", {"reward": "env/reward_mean", "kl": "objective/kl_per_token"})
    assert out == {"grpo/reward": 0.5, "env/reward_mean": 0.5, "grpo/kl": 0.01, "objective/kl_per_token": 0.01,
                   "grpo/eval/loss": 0.3, "grpo/step_time": 2.0}


def test_callback_writes_each_log_to_a_sqlite_store(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run("x: 1\n", method="grpo")
    seen = []
    cb = StoreCallback(store, run_id, "grpo/", total_steps=2, mapping={"reward": "env/reward_mean"},
                       notify=seen.append, extra_metrics=lambda: {"judge/j/calls": 3.0})
    args, state, control = TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none"), TrainerState(), \
        TrainerControl()
    cb.on_train_begin(args, state, control)
    for step, reward in ((1, 0.25), (2, float("nan"))):
        state.global_step = step
        cb.on_log(args, state, control, logs={"loss": 0.1 * step, "reward": reward, "epoch": 0.5 * step})
        cb.on_step_end(args, state, control)
    cb.on_log(args, state, control, logs={"train_runtime": 1.5, "train_loss": 0.15, "epoch": 1.0})  # end of train()
    cb.on_log(args, state, control, logs={"eval_loss": 0.05, "epoch": 1.0})  # Trainer.evaluate()

    wide = Store(tmp_path / "runs.db").metrics_wide(run_id)  # a second connection reads what was committed
    assert list(wide.index) == [1, 2]
    assert wide.loc[1, "grpo/reward"] == wide.loc[1, "env/reward_mean"] == 0.25
    assert math.isnan(wide.loc[2, "env/reward_mean"])  # NaN is kept as a gap, not dropped
    assert wide.loc[2, "grpo/loss"] == 0.2 and wide.loc[2, "judge/j/calls"] == 3.0
    assert wide.loc[2, "grpo/eval/loss"] == 0.05 and "grpo/train_runtime" not in wide
    assert cb.final == {"train_runtime": 1.5, "train_loss": 0.15}
    assert store.get_run(run_id).step == 2 and store.get_run(run_id).total_steps == 2
    assert [(p.phase, p.done, p.total) for p in seen] == [("train", 1, 2), ("train", 2, 2)]
    assert not cb.cancelled and not control.should_training_stop


def test_cancel_request_stops_trl_training_and_marks_the_run_cancelled(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = RunConfig(name="cancel-me", method="dpo")
    cfg.model.name_or_path = str(tiny_gpt2_dir)
    cfg.generation.max_new_tokens = cfg.generation.min_length = 4
    cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = "builtin", 4, 64
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.dpo.max_steps, cfg.dpo.batch_size, cfg.dpo.max_response_tokens, cfg.dpo.eval_pairs = 50, 2, 16, 0
    cfg.evaluation.samples_per_prompt = 1
    cfg.output_dir = str(tmp_path / "out")
    run_id = store.create_run(cfg.to_yaml(), method="dpo", total_steps=cfg.total_steps)

    def cancel_after_two(p):
        if p.phase == "train" and p.done == 2:
            store.request_cancel(run_id)

    assert execute(cfg, store, run_id, on_progress=cancel_after_two) == {}
    rec = store.get_run(run_id)
    assert rec.status == "cancelled"
    # on_log of step 2 requests it, on_step_end of step 3 sees it: at most one more step, of 50
    assert store.latest_step(run_id) <= 3 and rec.step <= 3
    # no trained policy saved, only the Trainer's checkpoint of the last step (a resume continues from it)
    (ckpt,) = store.checkpoints(run_id)
    assert ckpt.step == rec.step and Path(ckpt.path).name == f"checkpoint-{rec.step}" and is_resumable(ckpt.path)
    assert set(store.evaluations(run_id).phase) == {"before"}
