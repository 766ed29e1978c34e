"""Periodic checkpoints and resume: a PPO run (and a DPO run, on TRL's own checkpoints) SIGKILLed in a real subprocess
and resumed ends exactly where an uninterrupted run with the same seed ends; damaged or missing checkpoints; the
atomic write."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.checkpoint import CheckpointError, is_resumable, write_atomic
from engine.config import RewardBackendSettings, RunConfig
from engine.runner import execute, resume_problem
from engine.store import Store

CHILD = Path(__file__).resolve().parent / "resume_child.py"


def resumable_config(model_dir, tmp_path, steps: int = 6) -> RunConfig:
    cfg = RunConfig(name="resume-me")
    cfg.model.name_or_path, cfg.model.device, cfg.model.mixed_precision = str(model_dir), "cpu", "none"
    cfg.data.source, cfg.data.holdout_size, cfg.data.max_prompt_tokens = "builtin", 6, 64
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    # z-scored rewards and the adaptive KL controller: their running state must survive the restart too
    cfg.reward.backends, cfg.reward.normalize = [RewardBackendSettings(kind="profanity")], "zscore"
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.evaluation.bootstrap_samples, cfg.evaluation.samples_per_prompt = 100, 2
    p = cfg.ppo
    p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps = 4, 2, 2, steps
    p.learning_rate, p.adaptive_kl, p.kl_horizon = 1e-3, True, 8
    cfg.generation.max_new_tokens = 8
    cfg.checkpoint.every_steps, cfg.checkpoint.keep = 2, 2
    cfg.output_dir = str(tmp_path / "out")
    return cfg


def dpo_config(model_dir, tmp_path, steps: int = 6) -> RunConfig:
    cfg = resumable_config(model_dir, tmp_path, steps)
    cfg.method, cfg.name = "dpo", "resume-dpo"
    d = cfg.dpo
    d.max_steps, d.batch_size, d.learning_rate, d.max_response_tokens, d.eval_pairs = steps, 4, 1e-3, 32, 4
    return cfg


def child(*args, **kw):
    return subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


def final_weights(store: Store, run_id: str) -> dict:
    import torch
    from safetensors.torch import load_file

    path = Path(store.checkpoints(run_id)[-1].path)
    assert path.name == "policy"
    weights = load_file(path / "model.safetensors")
    if (path / "value_head.pt").exists():  # PPO's
        weights.update({f"value_head.{k}": v for k, v in torch.load(path / "value_head.pt").items()})
    return weights


def per_step(store: Store, run_id: str):
    wide = store.metrics_wide(run_id)
    timing = ("time/", "runtime", "per_second", "step_time")  # timings differ between processes
    return wide[[c for c in wide.columns if not any(t in c for t in timing)]]


@pytest.mark.parametrize("make_config", [resumable_config, dpo_config], ids=["ppo", "dpo"])
def test_killed_mid_run_and_resumed_matches_an_uninterrupted_run(make_config, tiny_gpt2_dir, tmp_path):
    cfg = make_config(tiny_gpt2_dir, tmp_path)
    config, db = cfg.save(tmp_path / "cfg.yaml"), tmp_path / "runs.db"
    store = Store(db)

    done = child("cli", "--db", db, "run", config)
    assert done.returncode == 0, done.stderr[-3000:]
    (ref_id,) = [r.id for r in store.list_runs()]

    # The same run in a process SIGKILLed at step 5: after the checkpoint of step 4, with step 5 already stored.
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, total_steps=cfg.total_steps)
    marker = tmp_path / "at-step"
    proc = subprocess.Popen([sys.executable, str(CHILD), "block", str(db), run_id, str(config), "5", str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the child never reached step 5"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert store.get_run(run_id).status == "running"  # nobody was left to record anything
    assert sorted(store.metrics_wide(run_id).index)[-1] == 5
    assert [c.step for c in store.checkpoints(run_id)] == [2, 4]
    before_ids = store.evaluations(run_id, "before")["id"].tolist()
    assert store.expire_leases(lease_s=0) == [run_id]  # the lease's expiry, without waiting for it

    resumed = child("cli", "--db", db, "resume", run_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from the checkpoint after step 4" in resumed.stdout

    ref, rec = store.get_run(ref_id), store.get_run(run_id)
    assert (rec.status, rec.step, rec.error) == ("completed", 6, None)
    # curves continue from the checkpoint: one value per (step, key), the same as the uninterrupted run's
    long = store.metrics(run_id)
    assert not long.duplicated(["step", "key"]).any()
    a, b = per_step(store, ref_id), per_step(store, run_id)
    assert list(a.index) == list(b.index) and list(a.index)[-1] == 6 and list(a.columns) == list(b.columns)
    assert (a - b).abs().max().max() <= 1e-6, (a - b).abs().max().sort_values().tail()
    assert store.samples(ref_id)["response"].tolist() == store.samples(run_id)["response"].tolist()
    # the before-evaluation was not redone; the after-evaluation matches
    assert store.evaluations(run_id, "before")["id"].tolist() == before_ids
    tox = {r: store.evaluations(r, "after")["toxicity"].tolist() for r in (ref_id, run_id)}
    assert len(tox[run_id]) == 12 and max(abs(x - y) for x, y in zip(*tox.values(), strict=True)) <= 1e-6
    assert rec.summary["delta_mean"] == pytest.approx(ref.summary["delta_mean"], abs=1e-6)
    if cfg.method == "dpo":  # TRL's held-out pair evaluation after training, on the same weights
        assert rec.summary["pair_eval"]["loss"] == pytest.approx(ref.summary["pair_eval"]["loss"], abs=1e-6)
    # the same policy weights and value head
    wa, wb = final_weights(store, ref_id), final_weights(store, run_id)
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6


def test_sigterm_stops_the_cli_run_at_a_step_boundary_with_a_checkpoint_and_resume_completes(tiny_gpt2_dir,
                                                                                                tmp_path):
    cfg = resumable_config(tiny_gpt2_dir, tmp_path, steps=40)
    cfg.evaluation.enabled, cfg.checkpoint.every_steps = False, 100  # only the stop's own checkpoint
    config, db = cfg.save(tmp_path / "cfg.yaml"), tmp_path / "runs.db"
    store = Store(db)
    proc = subprocess.Popen([sys.executable, str(CHILD), "cli", "--db", str(db), "run", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not (store.list_runs() and (store.latest_step(store.list_runs()[0].id) or 0) >= 2):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    rec = store.list_runs()[0]
    assert rec.status == "interrupted" and "signal 15" in rec.error
    (ckpt,) = store.checkpoints(rec.id)  # saved at the boundary where it stopped: nothing trained is lost
    assert ckpt.step == rec.step == store.latest_step(rec.id) < 40 and is_resumable(ckpt.path)

    resumed = child("cli", "--db", db, "resume", rec.id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint after step {ckpt.step}" in resumed.stdout
    assert sorted(store.metrics_wide(rec.id).index) == list(range(1, 41))
    assert not store.metrics(rec.id).duplicated(["step", "key"]).any()


def test_cancel_saves_a_checkpoint_and_a_damaged_newest_one_falls_back(tiny_gpt2_dir, tmp_path, caplog):
    cfg = resumable_config(tiny_gpt2_dir, tmp_path, steps=8)
    cfg.evaluation.enabled = False
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(cfg.to_yaml(), total_steps=cfg.total_steps)

    def cancel_at_5(p):
        if p.phase == "train" and p.done == 5:
            store.request_cancel(run_id)

    execute(cfg, store, run_id, cancel_at_5)
    assert store.get_run(run_id).status == "cancelled"
    assert resume_problem(store, run_id) is None
    ckpts = store.checkpoints(run_id)
    assert [c.step for c in ckpts] == [4, 5]  # keep 2: step 2's was pruned, on disk too; 5: saved on cancel
    on_disk = sorted(p.name for p in (tmp_path / "out" / run_id / "checkpoints").iterdir())
    assert on_disk == ["step-000004", "step-000005"] and all(is_resumable(c.path) for c in ckpts)

    (Path(ckpts[-1].path) / "trainer.pt").write_bytes(b"not a checkpoint")  # damaged: resume falls back to step 4
    store.reopen(run_id, to="queued")  # what a Resume button does; the worker then executes the queued run ...
    assert store.get_run(run_id).status == "queued"
    execute(cfg, store, run_id)  # ... as any other, and it resumes because it has a checkpoint
    rec = store.get_run(run_id)
    assert (rec.status, rec.step, rec.cancel_requested) == ("completed", 8, False)
    assert sorted(store.metrics_wide(run_id).index) == list(range(1, 9))
    assert not store.metrics(run_id).duplicated(["step", "key"]).any()
    assert "unreadable" in caplog.text and "step-000005" in caplog.text


def test_resume_without_a_checkpoint_is_refused_before_anything_changes(tiny_gpt2_dir, tmp_path):
    cfg = resumable_config(tiny_gpt2_dir, tmp_path, steps=3)
    cfg.evaluation.enabled, cfg.checkpoint.every_steps = False, 0
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(cfg.to_yaml(), total_steps=cfg.total_steps)
    execute(cfg, store, run_id, lambda p: p.done == 2 and store.request_cancel(run_id))
    assert store.get_run(run_id).status == "cancelled" and store.checkpoints(run_id) == []
    assert "no checkpoint to resume from" in resume_problem(store, run_id)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        execute(cfg, store, run_id, resume=True)
    assert store.get_run(run_id).status == "cancelled" and sorted(store.metrics_wide(run_id).index) == [1, 2]


def test_a_failed_write_leaves_no_checkpoint_and_the_previous_one_intact(tmp_path):
    def good(path):
        (path / "state.pt").write_text("complete")

    dest = write_atomic(tmp_path / "ckpts" / "step-000002", good)

    def full_disk(path):
        (path / "policy.pt").write_text("half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "ckpts" / "step-000004", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(dest, full_disk)  # the same step again: the complete one stays

    def zip_writer_fails(path):  # what torch.save raises when the disk fills under it (seen on a full tmpfs)
        (path / "policy.pt").write_text("half of it")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 12864 vs 12756")

    with pytest.raises(CheckpointError, match=r"step-000006: RuntimeError: \[enforce fail.*MiB free there"):
        write_atomic(tmp_path / "ckpts" / "step-000006", zip_writer_fails)
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["step-000002"]
    assert (dest / "state.pt").read_text() == "complete"


def test_grpo_cancelled_and_resumed_continues_its_curves(tiny_gpt2_dir, tmp_path):
    cfg = resumable_config(tiny_gpt2_dir, tmp_path, steps=5)
    cfg.method, cfg.evaluation.enabled, cfg.reward.normalize = "grpo", False, "none"
    o = cfg.online
    o.batch_size, o.num_generations, o.max_steps, o.learning_rate = 4, 2, 5, 1e-3
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(cfg.to_yaml(), method="grpo", total_steps=cfg.total_steps)
    execute(cfg, store, run_id, lambda p: p.phase == "train" and p.done == 3 and store.request_cancel(run_id))
    rec = store.get_run(run_id)
    assert rec.status == "cancelled" and [c.step for c in store.checkpoints(run_id)][-1] == rec.step

    execute(cfg, store, run_id, resume=True)
    assert store.get_run(run_id).status == "completed"
    assert sorted(store.metrics_wide(run_id).index) == [1, 2, 3, 4, 5]
    assert not store.metrics(run_id).duplicated(["step", "key"]).any()
    assert sorted(store.samples(run_id)["step"].unique()) == [1, 2, 3, 4, 5]


def test_dpo_ai_and_reward_model_runs_are_refused_a_resume(tmp_path):
    store = Store(tmp_path / "runs.db")
    for method in ("dpo_ai", "reward_model"):
        cfg = RunConfig(method=method)
        run_id = store.create_run(cfg.to_yaml(), method=method)
        store.set_status(run_id, "running")
        store.set_status(run_id, "failed", error="boom")
        with pytest.raises(ValueError, match=f"a {method} run cannot be resumed"):
            execute(cfg, store, run_id, resume=True)
        assert store.get_run(run_id).status == "failed"
