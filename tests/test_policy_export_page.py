"""The Runs (and Before / after) page's "Trained policy" panel (AppTest): Build policy zip → a Download button for a zip built on disk by
the engine that `from_pretrained` loads; "Continue training" opens Launch prefilled with model.init_from, which starts
a run; a run without a policy says so."""

from __future__ import annotations

import shutil
import zipfile

import torch

from engine.config import RewardBackendSettings, RunConfig
from tests.test_pages_apptest import app, by_key, db  # noqa: F401 (db: the fixture)


def run_with_policy(store, tmp_path, model_dir) -> str:
    """A completed ppo run whose final policy (a copy of the tiny GPT-2) is on disk and recorded, as a run leaves
    it; its config names the same base."""
    cfg = RunConfig(name="has-a-policy")
    cfg.model.name_or_path, cfg.model.device = str(model_dir), "cpu"
    cfg.data.source, cfg.data.holdout_size = "builtin", 4
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.reward.backends = [RewardBackendSettings(kind="profanity")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    cfg.output_dir = str(tmp_path / "runs")
    run_id = store.create_run(cfg.to_yaml(), name=cfg.name, total_steps=3)
    policy = tmp_path / "runs" / run_id / "policy"
    shutil.copytree(model_dir, policy)
    (policy / "value_head.pt").write_bytes(b"critic")
    store.set_status(run_id, "running")
    store.add_checkpoint(run_id, 3, str(policy.resolve()))
    store.set_summary(run_id, {"before": {"mean": 0.5, "std": 0.1, "toxic_rate": 0.5, "max": 0.9, "n": 4},
                               "after": {"mean": 0.25, "std": 0.1, "toxic_rate": 0.25, "max": 0.6, "n": 4},
                               "pct_improvement_mean": 50.0, "split": "test", "holdout_prompts": 4})
    store.set_progress(run_id, 3, 3)
    store.set_status(run_id, "completed")
    return run_id


def select(at, run_id: str):
    order = list(by_key(at.dataframe, "runs-table").value["id"])
    at.session_state["runs-table"] = {"selection": {"rows": [order.index(run_id)], "columns": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_runs_page_builds_a_policy_zip_and_continues_training(db, tmp_path, tiny_gpt2_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    run_id = run_with_policy(db, tmp_path, tiny_gpt2_dir)
    assert by_key(app("before_after", run_id).button, "policy-build")  # the run's result page offers it too
    at = select(app("runs"), run_id)
    assert by_key(at.checkbox, f"policy-merge-{run_id}").disabled  # full weights: nothing to merge
    assert not [b for b in at.get("download_button") if b.key == "policy-download"]
    by_key(at.button, "policy-build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [b for b in at.get("download_button") if b.key == "policy-download"]
    zip_path = tmp_path / "runs" / run_id / "exports" / f"{run_id}-policy.zip"
    assert zip_path.is_file()
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "unzipped")
    assert f"{run_id}-policy/README.md" in names and not any("value_head" in n for n in names)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "unzipped" / f"{run_id}-policy")
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(model(input_ids=ids).logits, base(input_ids=ids).logits)

    by_key(at.button, "policy-continue").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert by_key(at.text_input, "cfg-model-init_from").value == f"run:{run_id}"
    assert by_key(at.text_input, "cfg-name").value == "has-a-policy-continued"
    start = by_key(at.button, "start-run")
    assert not start.disabled, [e.value for e in at.error]
    start.click().run()
    assert not at.exception, [e.value for e in at.exception]
    (new,) = [r for r in db.list_runs() if r.id != run_id]
    assert RunConfig.from_yaml(new.config_yaml).model.init_from == f"run:{run_id}"
    assert new.status == "queued"


def test_launch_lists_a_bad_init_from_and_runs_page_says_when_there_is_no_policy(db, tmp_path):  # noqa: F811
    never = db.create_run(RunConfig(name="never-ran").to_yaml(), name="never-ran")
    at = select(app("runs"), never)
    assert not [b for b in at.button if b.key == "policy-build"]
    assert any("no policy to export" in c.value for c in at.caption)

    at = app()
    by_key(at.text_input, "cfg-model-init_from").set_value(f"run:{never}").run()
    assert by_key(at.button, "start-run").disabled
    assert any("has no final policy" in e.value for e in at.error)
