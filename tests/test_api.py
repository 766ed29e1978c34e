"""engine/api.py: the UI's API on both backends (a real SQLite file, a real PostgreSQL database) (no worker process started: queueing and reading only)."""

from __future__ import annotations

import io
import json
import math
import sys
import time
import zipfile

import pandas as pd
import pytest

from engine import api
from engine.config import ConfigError, RewardBackendSettings, RunConfig
from engine.store import Store
from tests.waiting import wait_for


@pytest.fixture
def lab(store_url):
    store = Store(store_url)
    yield api.Lab(store, start_worker=False)
    store.close()


def small_config(name: str = "api") -> RunConfig:
    cfg = RunConfig(name=name)
    cfg.model.name_or_path = "builtin:tiny-gpt2"
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.max_ppo_steps = 4, 2, 3
    cfg.ppo.num_generations, cfg.evaluation.samples_per_prompt, cfg.model.mixed_precision = 1, 1, "none"
    return cfg


def evaluation_rows(phase: str, tox: list[float]) -> list[dict]:
    return [{"idx": i, "prompt": f"p{i}", "response": f"{phase} {i}", "toxicity": t} for i, t in enumerate(tox)]


def test_api_module_imports_no_streamlit():
    import subprocess

    code = "import sys, engine.api; print('streamlit' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_validate_config_groups_messages_by_field(tmp_path):
    cfg = small_config()
    assert api.validate_config(cfg) == {}
    cfg.ppo.mini_batch_size = 3
    cfg.generation.top_p = 0.0
    errors = api.validate_config(cfg)
    assert set(errors) == {"ppo.mini_batch_size", "generation.top_p"}
    assert "must divide batch_size (4)" in errors["ppo.mini_batch_size"][0]
    assert set(api.validate_config({"ppo": {"learning_rat": 1e-5}})) == {"ppo.learning_rat"}
    assert "<yaml>" in api.validate_config("ppo: [unclosed")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = small_config()
    cfg.data.source = str(empty)
    assert api.validate_config(cfg) == {}  # fields alone are fine
    assert set(api.validate_config(cfg, check_data=True)) == {"data.source"}


def test_start_cancel_delete_and_queue(lab):
    with pytest.raises(ConfigError):
        lab.start_run({"ppo": {"batch_size": 0}})
    first = lab.start_run(small_config("first"))
    second = lab.start_run(small_config("second").to_yaml())
    assert [r.id for r in lab.list_runs("queued")] == [second, first]  # queued in the store, newest first
    assert [r.name for r in lab.list_runs()] == ["second", "first"]
    assert lab.run_config(first).ppo.max_ppo_steps == 3
    assert lab.cancel_run(first) == "cancelled"
    assert lab.get_run(first).status == "cancelled" and [r.id for r in lab.list_runs("queued")] == [second]
    lab.delete_run(second)  # a queued run is cancelled, then deleted
    assert lab.list_runs("queued") == [] and [r.id for r in lab.list_runs()] == [first]


def test_status_phase_and_eta_from_what_the_owning_process_stored(lab):
    """The lab shows phase, message and ETA of a run another process executes: all of it comes from the store."""
    owner = Store(lab.store.url, owner="cli-elsewhere-1")  # "another process"
    run_id = owner.create_run(small_config().to_yaml(), total_steps=10)
    owner.claim_run(run_id)
    for step, secs in ((1, 3.0), (2, 5.0)):
        owner.note_progress(run_id, "train", f"step {step}/10", step_time=secs)
        owner.set_progress(run_id, step, 10)
    owner.beat()
    s = lab.status(run_id)
    assert (s.status, s.phase, s.message, s.step, s.total) == ("running", "train", "step 2/10", 2, 10)
    assert s.eta_s == pytest.approx(8 * 4.0) and s.fraction == pytest.approx(0.2)
    assert s.owner == "cli-elsewhere-1" and 0 <= s.heartbeat_age_s < 60
    owner.set_status(run_id, "failed", error="boom", traceback="Traceback ...")
    s = lab.status(run_id)
    assert (s.status, s.phase, s.eta_s, s.error, s.traceback) == ("failed", "failed", None, "boom", "Traceback ...")
    owner.close()


def test_status_eta_from_metric_rows_when_no_step_times_were_stored(lab):
    run_id = lab.store.create_run(small_config().to_yaml(), total_steps=10)
    lab.store.claim_run(run_id)
    for step, secs in ((1, 3.0), (2, 5.0)):
        lab.store.log_metrics(run_id, step, {"time/step_s": secs})
    lab.store.set_progress(run_id, 2, 10)
    assert lab.status(run_id).eta_s == pytest.approx(8 * 4.0)
    lab.store.set_status(run_id, "completed")


def test_reads_mark_a_dead_owners_run_interrupted_and_list_workers(store_url):
    # A 5-s lease: short enough to expire soon, long enough that a loaded machine's late heartbeat still reads "live"
    store = Store(store_url, lease_s=5)
    lab = api.Lab(store, start_worker=False, housekeeping_s=0)
    dead = Store(store.url, owner="w-dead-1", lease_s=5)
    dead.register_worker(device="cpu")
    run_id = dead.create_run(small_config().to_yaml(), total_steps=3)
    dead.claim_run(run_id)
    # the worker row's current run travels with its heartbeat (a thread): wait for it rather than race it
    # (and "live" is read against the heartbeat's age: on a loaded machine one may come late, so wait for the row)
    expected = [["w-dead-1", "cpu", "live", run_id]]
    assert wait_for(lambda: lab.workers_table()[["worker", "device", "state", "run"]].values.tolist() == expected,
                    timeout=60, every=0.02), lab.workers_table()
    dead.unregister_worker()
    dead._disown(run_id)  # its heartbeats stop, as when the process dies
    deadline = time.monotonic() + 120
    while lab.get_run(run_id).status == "running" and time.monotonic() < deadline:
        lab.list_runs()  # any read of the run list notices
        time.sleep(0.05)
    r = lab.get_run(run_id)
    assert r.status == "interrupted" and "w-dead-1 sent no heartbeat" in r.error
    store.close()
    dead.close()


def test_before_after_table_joins_phases_on_idx():
    ev = pd.DataFrame([dict(r, phase="before") for r in evaluation_rows("before", [0.9, 0.2, 0.5])]
                      + [dict(r, phase="after") for r in evaluation_rows("after", [0.1, 0.4])])
    table = api.before_after_table(ev)
    assert list(table.columns) == ["idx", "prompt", "response_before", "toxicity_before", "response_after",
                                   "toxicity_after", "change"]
    assert list(table["idx"]) == [0, 1, 2]
    assert table["change"].iloc[:2].tolist() == pytest.approx([-0.8, 0.2])
    assert table.loc[2, "response_after"] == "" and math.isnan(table.loc[2, "change"])
    assert api.before_after_table(ev.iloc[0:0]).empty


def test_samples_table_flattens_scores_newest_first():
    samples = pd.DataFrame({"id": [1, 2], "step": [1, 2], "idx": [0, 0], "prompt": ["a", "b"],
                            "response": ["x", "y"], "reward": [0.5, 1.5],
                            "scores": [{"profanity": 0.1}, {"profanity": 0.2, "jigsaw": 0.3, "jigsaw/p_toxic": 0.9}]})
    table = api.samples_table(samples)
    assert list(table["response"]) == ["y", "x"]
    assert table["profanity"].tolist() == [0.2, 0.1] and math.isnan(table["jigsaw"].iloc[1])
    assert "jigsaw/p_toxic" not in table.columns
    assert api.samples_table(samples, signals=True)["jigsaw/p_toxic"].iloc[0] == 0.9


def test_runs_table_and_export(lab, tmp_path):
    cfg = small_config("exported")
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="jigsaw", weight=0.5)]
    run_id = lab.store.create_run(cfg.to_yaml(), name="exported", total_steps=3)
    lab.store.set_status(run_id, "running")
    lab.store.log_metrics(run_id, 1, {"objective/kl": 0.5})
    lab.store.add_evaluations(run_id, "before", evaluation_rows("before", [0.9]))
    lab.store.add_evaluations(run_id, "after", evaluation_rows("after", [0.3]))
    lab.store.set_summary(run_id, {"before": {"mean": 0.9}, "after": {"mean": 0.3}, "pct_improvement_mean": 66.7,
                                   "mean_kl": 0.25})
    lab.store.set_status(run_id, "completed")
    row = lab.runs_table().iloc[0]
    assert (row["name"], row["status"], row["model"], row["rewards"]) == (
        "exported", "completed", "builtin:tiny-gpt2", "profanity×1 + jigsaw×0.5")
    assert (row["tox_before"], row["tox_after"], row["improvement_%"], row["mean_kl"]) == (0.9, 0.3, 66.7, 0.25)

    data = lab.export_run(run_id)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = {n.split("/", 1)[1] for n in zf.namelist()}
        assert {"config.yaml", "run.json", "summary.json", "metrics.csv", "before_after.csv"} <= names
        assert RunConfig.from_yaml(zf.read(f"{run_id}/config.yaml").decode()).name == "exported"
        assert json.loads(zf.read(f"{run_id}/run.json"))["status"] == "completed"
        ba = pd.read_csv(zf.open(f"{run_id}/before_after.csv"))
        assert ba["change"].tolist() == pytest.approx([-0.6])
    out = lab.export_run(run_id, tmp_path / "export")
    assert (out / "metrics.csv").read_text().splitlines()[0] == "id,step,key,value,time"


def test_score_text_per_backend_with_errors_isolated(tiny_roberta_classifier_dir):
    backends = [RewardBackendSettings(kind="profanity"),
                RewardBackendSettings(kind="hf_classifier", name="tiny",
                                      options={"model": str(tiny_roberta_classifier_dir), "label": "nothate"}),
                RewardBackendSettings(kind="hf_classifier", name="no model")]
    nice, nasty = (api.score_text(backends, t) for t in ("I like you.", "You are terrible and i hate you."))
    assert [r["backend"] for r in nice] == ["profanity", "tiny", "no model"]
    assert nasty[0]["toxicity"] > nice[0]["toxicity"] and nasty[0]["reward"] < nice[0]["reward"]
    assert nice[0]["error"] is None and nice[0]["raw"]["p_offensive"] == pytest.approx(nice[0]["toxicity"])
    tiny = nice[1]
    assert tiny["error"] is None and math.isfinite(tiny["reward"]) and 0.0 <= tiny["toxicity"] <= 1.0
    assert "needs options.model" in nice[2]["error"] and math.isnan(nice[2]["reward"])
    with pytest.raises(ValueError, match="text must be a str"):
        api.score_text(backends, None)


def test_connect_starts_no_local_worker_when_told_not_to(store_url, monkeypatch):
    monkeypatch.setenv("RLAIF_LAB_LOCAL_WORKER", "0")
    lab = api.Lab.connect(store_url)
    lab.start_run(small_config())
    assert lab.start_worker is False and lab.worker_process is None and lab.store.list_workers() == []
    assert lab.store.owner.startswith("ui-")
    lab.close()
