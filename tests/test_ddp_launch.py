"""A whole run on 2 CPU processes: `python -m engine run CONFIG` with `distributed.num_processes: 2` launches itself
under `accelerate launch` (real processes, gloo), trains PPO (the lab's DDP) or GRPO (TRL under accelerate), and only
rank 0 writes the store: every metric once per step, the samples, the checkpoints, the evaluation and the summary.
Bad distributed settings are refused before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import ConfigError, RewardBackendSettings, RunConfig, validate
from engine.launch import ReadOnlyStore, accelerate_command
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _config(model_dir: Path, tmp_path: Path, method: str) -> RunConfig:
    cfg = RunConfig(name=f"ddp-{method}", method=method)
    cfg.model.name_or_path = str(model_dir)
    cfg.model.device, cfg.model.mixed_precision, cfg.model.threads = "cpu", "none", 1
    cfg.generation.max_new_tokens = cfg.generation.min_length = 6
    cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = "builtin", 4, 64
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples, cfg.evaluation.samples_per_prompt = 50, 1
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.ppo.batch_size, cfg.ppo.num_generations, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, 2, 2
    cfg.ppo.samples_per_step = 2
    cfg.online.batch_size, cfg.online.num_generations, cfg.online.max_steps = 2, 2, 2
    cfg.online.samples_per_step = 2  # rank 0's 2 completions a step (it stores samples from its own share)
    cfg.checkpoint.every_steps = 1
    cfg.alarms.probe_every = 0
    cfg.distributed.num_processes = 2
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def _engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "engine", "--db", str(tmp_path / "runs.db"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_a_two_process_run_writes_the_store_once(tiny_gpt2_dir, tmp_path, method):
    cfg = _config(tiny_gpt2_dir, tmp_path, method)
    path = cfg.save(tmp_path / "cfg.yaml")
    done = _engine(tmp_path, "run", str(path))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "launching 2 processes" in out and "2 processes)" in out

    store = Store(tmp_path / "runs.db")
    runs = store.list_runs()
    assert len(runs) == 1  # rank 1 registered nothing
    run_id = runs[0].id
    rec = store.get_run(run_id)
    assert (rec.status, rec.step) == ("completed", 2), rec.error
    long = store.metrics(run_id)
    assert not long.duplicated(["step", "key"]).any()  # one writer
    assert set(long[long.key == "env/reward_mean"].step) == {1, 2}
    assert len(store.samples(run_id)) == 2 * (cfg.ppo.samples_per_step if method == "ppo"
                                               else cfg.online.samples_per_step)
    assert (store.evaluations(run_id).groupby("phase").size() == 4).all()  # rank 0 evaluated, once per side
    assert rec.summary["train_steps"] == 2
    if method == "ppo":
        assert [c.step for c in store.checkpoints(run_id)][-1] == 2
        assert "ppo/loss/total" in set(long.key)


def test_bad_distributed_settings_are_refused_before_anything_starts(tiny_gpt2_dir, tmp_path):
    cfg = _config(tiny_gpt2_dir, tmp_path, "ppo")
    cfg.ppo.batch_size, cfg.ppo.num_generations = 6, 2  # 3 prompts a step over 2 processes
    cfg.distributed.zero_stage = 1
    assert {e.field for e in validate(cfg)} == {"ppo.batch_size", "distributed.zero_stage"}
    cfg = _config(tiny_gpt2_dir, tmp_path, "ppo")
    cfg.distributed.offload = True  # offload is DeepSpeed's
    assert [e.field for e in validate(cfg)] == ["distributed.offload"]
    cfg = _config(tiny_gpt2_dir, tmp_path, "ppo")
    cfg.distributed.zero_stage = 3  # PPO: DDP only; and ZeRO needs GPUs
    assert [e.field for e in validate(cfg)] == ["distributed.zero_stage", "distributed.zero_stage"]
    cfg = _config(tiny_gpt2_dir, tmp_path, "grpo")
    cfg.model.device, cfg.distributed.zero_stage = "auto", 2
    assert validate(cfg) == []  # accepted: checked against the machine when it launches
    cmd = accelerate_command(cfg, ["run", "cfg.yaml"])
    assert cmd[cmd.index("--zero_stage") + 1] == "2" and "--use_deepspeed" in cmd and "--multi_gpu" not in cmd
    assert cmd[-4:] == ["-m", "engine", "run", "cfg.yaml"]
    path = cfg.save(tmp_path / "zero.yaml")
    done = _engine(tmp_path, "run", str(path))  # no deepspeed / no GPUs here: refused, nothing registered
    assert done.returncode == 2 and "distributed." in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "runs.db").exists() or len(Store(tmp_path / "runs.db").list_runs()) == 0
    with pytest.raises(ConfigError, match="distributed.num_processes"):  # a worker cannot run it in-process
        from engine.methods.lifecycle import run_policy
        from engine.runner import policy_method

        run_policy(policy_method("ppo"), _config(tiny_gpt2_dir, tmp_path, "ppo"), ReadOnlyStore(None), "x",
                   lambda p: None, lambda: None)


def test_a_rank_other_than_0_reads_the_store_and_writes_nothing(tmp_path):
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(RunConfig().to_yaml(), name="r", method="ppo", total_steps=2)
    ro = ReadOnlyStore(store)
    ro.log_metrics(run_id, 1, {"a": 1.0})
    ro.set_status(run_id, "failed", error="x")
    ro.add_samples(run_id, 1, [{"prompt": "p", "response": "r", "reward": 0.0, "scores": {}}])
    assert ro.get_run(run_id).status == "queued" and store.metrics(run_id).empty and store.samples(run_id).empty
    assert ro.is_cancel_requested(run_id) is False


def test_a_worker_launches_a_queued_multi_process_run(tiny_gpt2_dir, tmp_path):
    """A run queued with num_processes 2 (from the browser, say) is executed by a real worker process: the worker
    launches 2 processes, rank 0 adopts the lease and writes the store once per step; the worker goes on serving."""
    from engine.worker import submit

    cfg = _config(tiny_gpt2_dir, tmp_path, "ppo")
    store = Store(tmp_path / "runs.db")
    run_id = submit(store, cfg)
    done = _engine(tmp_path, "worker", "--once", "--threads", "1")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    rec = store.get_run(run_id)
    assert (rec.status, rec.step) == ("completed", 2), (rec.error, out[-3000:])
    assert rec.owner.startswith("ddp-")  # rank 0 of the launched processes held the lease, not the worker
    assert f"run {run_id}: 2 processes, starting" in out and "accelerate.commands.launch" not in (rec.error or "")
    long = store.metrics(run_id)
    assert not long.duplicated(["step", "key"]).any() and set(long[long.key == "env/reward_mean"].step) == {1, 2}
    assert (store.evaluations(run_id).groupby("phase").size() == 4).all()
    assert [c.step for c in store.checkpoints(run_id)][-1] == 2


def test_a_launch_that_ends_before_rank_0_adopts_fails_the_run_with_its_output(tiny_gpt2_dir, tmp_path, monkeypatch):
    import engine.launch as launch
    from engine.worker import execute_claimed

    cfg = _config(tiny_gpt2_dir, tmp_path, "ppo")
    store = Store(tmp_path / "runs.db", owner="w-test")
    try:
        run_id = store.create_run(cfg.to_yaml(), name="r", method="ppo", total_steps=2)
        record = store.claim_run(run_id)
        monkeypatch.setattr(launch, "accelerate_command", lambda cfg, args, port: [
            sys.executable, "-c", "import sys; print('rendezvous failed: no route'); sys.exit(3)"])
        assert execute_claimed(store, record, "w-test") is True
        rec = store.get_run(run_id)
        assert rec.status == "failed" and "exit status 3" in rec.error and "rendezvous failed" in rec.error
        assert "2 processes" in rec.error and run_id not in store.owned_runs()
    finally:
        store.close()
