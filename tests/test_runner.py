"""A whole run end to end on a tiny local model: store contents, checkpoint, failure, cancel, CLI, YAML replay."""

import json

import pytest

from engine.__main__ import main as cli
from engine.config import ConfigError, RewardBackendSettings, RunConfig
from engine.runner import execute, run
from engine.store import Store


def tiny_config(model_dir, tmp_path, steps=3) -> RunConfig:
    cfg = RunConfig(name="tiny")
    cfg.model.name_or_path = str(model_dir)
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, steps
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 1, 1, "none"
    cfg.ppo.learning_rate = 1e-3
    cfg.generation.max_new_tokens = 8
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.data.max_prompt_tokens = 96
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples = 200
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def test_run_end_to_end_writes_everything(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path)
    run_id, summary = run(cfg, store)
    rec = store.get_run(run_id)
    assert rec.status == "completed" and rec.step == 3 and rec.started_at and rec.finished_at
    assert RunConfig.from_yaml(rec.config_yaml) == cfg  # the stored YAML replays the run

    wide = store.metrics_wide(run_id)
    assert list(wide.index) == [1, 2, 3]
    for key in ("objective/kl", "ppo/returns/mean", "env/reward_mean", "env/reward/profanity"):
        assert wide[key].notna().all(), key
    assert len(store.samples(run_id)) == 3 * cfg.ppo.samples_per_step

    ev = store.evaluations(run_id)
    assert sorted(ev.phase.unique()) == ["after", "before"]
    assert (ev.groupby("phase").size() == 8).all()
    # Responses are the generated text alone, never the prompt (seed traps 2 and 4).
    assert not any(r.startswith("Summarize") for r in ev.response)

    for key in ("before", "after", "pct_improvement_mean", "delta_ci_low", "mean_kl", "length_before",
                "wall_seconds"):
        assert key in summary
    assert store.get_run(run_id).summary["before"]["n"] == 8

    ckpt = store.checkpoints(run_id)[0].path
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpt)  # the checkpoint loads with from_pretrained


def test_several_generations_and_eval_samples_per_prompt(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=2)
    cfg.ppo.num_generations = 2  # 4 responses a step: 2 prompts x 2
    cfg.evaluation.samples_per_prompt = 3
    run_id, summary = run(cfg, store)
    samples = store.samples(run_id)
    assert samples.groupby("step").size().tolist() == [4, 4]
    assert (samples.groupby("step")["prompt"].nunique() == 2).all()  # each prompt twice, side by side
    ev = store.evaluations(run_id)
    before = ev[ev.phase == "before"].sort_values("idx")
    assert len(before) == 24 and before["prompt"].nunique() == 8
    assert (before["prompt"].to_numpy().reshape(8, 3) == before["prompt"].to_numpy()[::3, None]).all()
    assert summary["before"]["n"] == 24 and summary["samples_per_prompt"] == 3
    assert summary["holdout_prompts"] == 8


class Boom:
    """A reward backend that fails on its third call."""

    name = "boom"
    calls = 0

    def score(self, prompts, responses):
        from engine.rewards.base import RewardResult

        Boom.calls += 1
        if Boom.calls >= 3:
            raise RuntimeError("reward server went away")
        return RewardResult([0.0] * len(prompts), {})


def test_failing_run_records_why_and_keeps_earlier_steps(tiny_gpt2_dir, tmp_path, monkeypatch):
    import engine.rewards as rewards

    real = rewards.build_backend
    monkeypatch.setattr(rewards, "build_backend",
                        lambda s, device="cpu": Boom() if s.kind == "jigsaw" else real(s, device))
    Boom.calls = 0
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=5)
    cfg.reward.backends = [RewardBackendSettings(kind="jigsaw")]  # replaced by Boom above
    cfg.evaluation.enabled = False
    run_id = store.create_run(cfg.to_yaml(), name="boom")
    with pytest.raises(RuntimeError):
        execute(cfg, store, run_id)
    rec = store.get_run(run_id)
    assert rec.status == "failed"
    assert "reward server went away" in rec.error and "Traceback" in rec.traceback
    assert sorted(store.metrics_wide(run_id).index) == [1, 2]  # steps before the failure are kept


def test_cancel_is_honoured_within_one_step(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=50)
    run_id = store.create_run(cfg.to_yaml())

    def cancel_after_two(p):
        if p.phase == "train" and p.done == 2:
            store.request_cancel(run_id)

    execute(cfg, store, run_id, on_progress=cancel_after_two)
    rec = store.get_run(run_id)
    assert rec.status == "cancelled"
    assert store.latest_step(run_id) == 2


def test_bad_data_fails_before_any_model_loads(tmp_path, monkeypatch):
    import engine.models as models

    monkeypatch.setattr(models, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt\nonly one prompt\n")
    cfg = RunConfig()
    cfg.data.source = str(prompts)
    with pytest.raises(ConfigError) as exc:
        run(cfg, Store(tmp_path / "x.db"))
    assert exc.value.errors[0].field == "data.source"
    assert "1 prompts" in str(exc.value) or "only 1" in str(exc.value) or "1 prompt" in str(exc.value)
    assert Store(tmp_path / "x.db").list_runs() == []  # nothing registered for a bad config


def test_cli_run_runs_show_export(tiny_gpt2_dir, tmp_path, capsys):
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=2)
    path = cfg.save(tmp_path / "tiny.yaml")
    db = str(tmp_path / "cli.db")
    assert cli(["--db", db, "run", str(path), "--set", "ppo.max_ppo_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "mean toxicity" in out
    run_id = Store(db).list_runs()[0].id
    assert Store(db).get_run(run_id).total_steps == 1
    assert cli(["--db", db, "runs"]) == 0 and run_id in capsys.readouterr().out
    assert cli(["--db", db, "show", run_id]) == 0 and "objective/kl" in capsys.readouterr().out
    assert cli(["--db", db, "export", run_id, "--out", str(tmp_path / "exp")]) == 0
    exp = tmp_path / "exp"
    assert {p.name for p in exp.iterdir()} >= {"config.yaml", "metrics.csv", "evaluations.csv", "summary.json"}
    assert RunConfig.load(exp / "config.yaml").ppo.max_ppo_steps == 1
    assert "before" in json.loads((exp / "summary.json").read_text())


def test_cli_rejects_bad_config_with_field_name(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  batch_size: 16\n  mini_batch_size: 5\n")
    assert cli(["--db", str(tmp_path / "x.db"), "run", str(bad)]) == 2
    assert "ppo.mini_batch_size" in capsys.readouterr().err


def test_killed_cli_run_is_marked_interrupted(tiny_gpt2_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=10_000)
    cfg.evaluation.enabled = False
    path = cfg.save(tmp_path / "long.yaml")
    db = tmp_path / "kill.db"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "--db", str(db), "run", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Store(db)
    deadline = time.time() + 120
    while time.time() < deadline:
        runs = store.list_runs()
        if runs and (store.latest_step(runs[0].id) or 0) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    rec = store.list_runs()[0]
    assert rec.status == "interrupted" and "signal" in rec.error
    assert store.latest_step(rec.id) >= 2  # metrics written before the kill are kept
