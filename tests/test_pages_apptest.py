"""One AppTest per page of the lab (streamlit.testing.v1): the app against a temporary store ($RLAIF_LAB_DB).

AppTest runs the scripts in this process, so the test writes runs straight into the same SQLite file and
reads what the pages did. (AppTest never ticks `st.fragment(run_every=...)`; live updating is covered by
the browser tests in tests/e2e/.)
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from engine.config import RewardBackendSettings, RunConfig
from engine.store import Store
from engine.worker import Worker

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def page(name: str) -> str:
    return f"../pages/{name}.py"


@pytest.fixture
def db(tmp_path, monkeypatch, tmp_path_factory):
    path = tmp_path / "lab.db"
    monkeypatch.setenv("RLAIF_LAB_DB", str(path))
    # The operator's folders (engine.policy): the test's models live in pytest's temporary folder.
    settings = tmp_path / "lab_settings.toml"
    settings.write_text(f'[paths]\nmodels = ["{tmp_path_factory.getbasetemp()}"]\n')
    monkeypatch.setenv("RLAIF_LAB_SETTINGS", str(settings))
    monkeypatch.chdir(tmp_path)  # a run started from the form saves its checkpoint under ./runs
    # AppTest has no server and reads no .streamlit/config.toml from tmp_path: say it serves loopback, as the lab does
    st_config.set_option("server.address", "127.0.0.1")
    # The lab starts no worker process here: tests that train ask for the `worker` fixture. Runs a test writes as
    # "running" are the test's (its Store owns and heartbeats them): no page marks them interrupted.
    monkeypatch.setenv("RLAIF_LAB_LOCAL_WORKER", "0")
    store = Store(path)
    yield store
    store.close()


@pytest.fixture
def worker(db):
    """A worker serving the test's store, on a thread (its own Store, owner id and heartbeats, as a process has)."""
    w = Worker(db.url, poll_s=0.05)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    assert _wait(lambda: db.live_workers())
    yield w
    w.stop("the test ended")
    thread.join(60)
    assert not thread.is_alive()


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def app(page_name: str | None = None, run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    if run_id:
        at.query_params["run"] = run_id
    at.run()
    if page_name:
        at.switch_page(page(page_name)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def by_key(elements, key: str):
    found = [e for e in elements if e.key == key]
    assert found, f"no element with key {key!r}"
    return found[0]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def add_finished_run(store: Store, name: str = "finished", steps: int = 5, tox_after: float = 0.2) -> str:
    cfg = RunConfig(name=name)
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="jigsaw", weight=0.5)]
    run_id = store.create_run(cfg.to_yaml(), name=name, total_steps=steps)
    store.set_status(run_id, "running")
    for step in range(1, steps + 1):
        store.log_metrics(run_id, step, {
            "objective/kl": 0.1 * step, "objective/kl_coef": 0.2, "ppo/returns/mean": -1.0 + 0.1 * step,
            "env/reward_mean": 0.5 * step, "env/reward_std": 0.1, "env/reward/profanity": 0.4 * step,
            "env/reward/jigsaw": 0.6 * step, "ppo/loss/policy": -0.01, "ppo/loss/value": 0.3,
            "objective/entropy": 2.0, "ppo/policy/clipfrac": 0.05, "env/response_length_mean": 12.0,
            "time/tokens_per_s": 100.0})
        store.add_samples(run_id, step, [{"prompt": f"prompt {step}", "response": f"response {step}", "reward": 1.0,
                                          "scores": {"profanity": 0.9, "jigsaw": 0.8}}])
    before = [0.9, 0.5, 0.1, 0.6]
    after = [0.2, 0.7, 0.1, tox_after]
    store.add_evaluations(run_id, "before", [{"idx": i, "prompt": f"hold-out {i}", "response": f"bad answer {i}",
                                              "toxicity": t} for i, t in enumerate(before)])
    store.add_evaluations(run_id, "after", [{"idx": i, "prompt": f"hold-out {i}", "response": f"kind answer {i}",
                                             "toxicity": t} for i, t in enumerate(after)])
    store.set_summary(run_id, {
        "before": {"mean": 0.525, "std": 0.33, "toxic_rate": 0.5, "max": 0.9, "n": 4},
        "after": {"mean": (1.0 + tox_after) / 4, "std": 0.3, "toxic_rate": 0.25, "max": 0.7, "n": 4},
        "pct_improvement_mean": 42.9, "pct_improvement_std": 9.1, "delta_ci_low": -0.5, "delta_ci_high": 0.1,
        "pct_ci_low": -20.0, "pct_ci_high": 80.0, "mean_kl": 1.234, "length_before": 10.0, "length_after": 9.0,
        "evaluator": "profanity"})
    store.set_progress(run_id, steps, steps)
    store.set_status(run_id, "completed")
    return run_id


# ---- launch --------------------------------------------------------------------------------------------


def test_launch_defaults_validation_and_start(db, worker, tiny_gpt2_dir):
    at = app()
    assert at.title[0].value == "Launch a run"
    defaults = RunConfig()
    assert by_key(at.number_input, "cfg-ppo-learning_rate").value == pytest.approx(defaults.ppo.learning_rate)
    assert by_key(at.number_input, "cfg-ppo-batch_size").value == defaults.ppo.batch_size
    assert by_key(at.selectbox, "cfg-model-choice").value == "builtin:smollm2"
    assert not errors(at)

    # an invalid value: the error shows at once, and Start is disabled
    by_key(at.number_input, "cfg-ppo-mini_batch_size").set_value(5).run()
    assert any(f"must divide batch_size ({defaults.ppo.batch_size})" in e for e in errors(at))
    assert by_key(at.button, "start-run").disabled

    # a second reward backend, an hf_classifier without its model: the error names the field's problem
    n_default = len(defaults.reward.backends)
    by_key(at.button, "add-reward").click().run()
    rows = at.session_state["reward_rows"]
    assert len(rows) == n_default + 1
    by_key(at.selectbox, f"rw-{rows[-1]}-kind").set_value("hf_classifier").run()
    assert any("hf_classifier needs options.model" in e for e in errors(at))
    by_key(at.button, f"remove-reward-{rows[-1]}").click().run()
    assert len(at.session_state["reward_rows"]) == n_default

    # a small valid run on the tiny model
    by_key(at.number_input, "cfg-ppo-batch_size").set_value(4)
    by_key(at.number_input, "cfg-ppo-mini_batch_size").set_value(2)
    by_key(at.number_input, "cfg-ppo-num_generations").set_value(1)
    by_key(at.number_input, "cfg-ppo-max_ppo_steps").set_value(2)
    by_key(at.number_input, "cfg-generation-max_new_tokens").set_value(8)
    by_key(at.number_input, "cfg-data-holdout_size").set_value(8)
    by_key(at.number_input, "cfg-data-validation_size").set_value(0)  # the 42 built-in prompts
    by_key(at.selectbox, "cfg-data-source_choice").set_value("builtin")
    by_key(at.selectbox, "cfg-evaluator-kind").set_value("profanity")
    by_key(at.text_input, "cfg-name").set_value("from-the-form")
    by_key(at.selectbox, "cfg-model-choice").set_value("Hugging Face id or local path").run()
    by_key(at.text_input, "cfg-model-custom").set_value(str(tiny_gpt2_dir / "nope")).run()
    assert any("no such model directory" in e for e in errors(at))
    by_key(at.text_input, "cfg-model-custom").set_value(str(tiny_gpt2_dir)).run()
    assert not errors(at), errors(at)
    assert not by_key(at.button, "start-run").disabled
    by_key(at.button, "start-run").click().run()

    runs = db.list_runs()
    assert [r.name for r in runs] == ["from-the-form"]
    cfg = RunConfig.from_yaml(runs[0].config_yaml)
    assert (cfg.model.name_or_path, cfg.ppo.batch_size, cfg.ppo.max_ppo_steps) == (str(tiny_gpt2_dir), 4, 2)
    assert cfg.ppo.learning_rate == pytest.approx(defaults.ppo.learning_rate)
    assert cfg.evaluation.evaluator.kind == "profanity" and cfg.data.source == "builtin"
    assert at.title[0].value == "Live run"  # Start goes to the live page of the new run
    assert at.query_params["run"] == runs[0].id


def test_launch_clones_a_past_runs_config(db):
    cfg = RunConfig(name="to-clone")
    cfg.ppo.learning_rate = 3e-4
    cfg.reward.backends = [RewardBackendSettings(kind="jigsaw", weight=0.25, options={"label": "insult"})]
    run_id = db.create_run(cfg.to_yaml(), name="to-clone")
    at = app()
    by_key(at.selectbox, "clone-run").set_value(run_id).run()
    by_key(at.button, "clone-button").click().run()
    assert by_key(at.text_input, "cfg-name").value == "to-clone"
    assert by_key(at.number_input, "cfg-ppo-learning_rate").value == pytest.approx(3e-4)
    row = at.session_state["reward_rows"][0]
    assert by_key(at.selectbox, f"rw-{row}-kind").value == "jigsaw"
    assert by_key(at.number_input, f"rw-{row}-weight").value == pytest.approx(0.25)
    assert "label: insult" in by_key(at.text_area, f"rw-{row}-options").value


def test_launch_starts_from_a_preset(db):
    at = app()
    assert by_key(at.radio, "preset").value == "default"  # presets come first, the measured default chosen
    assert by_key(at.number_input, "cfg-ppo-learning_rate").value == pytest.approx(RunConfig().ppo.learning_rate)
    by_key(at.radio, "preset").set_value("seed-article").run()
    assert by_key(at.number_input, "cfg-ppo-learning_rate").value == pytest.approx(1.41e-5)
    assert by_key(at.number_input, "cfg-ppo-max_ppo_steps").value == 10
    by_key(at.radio, "preset").set_value("tour").run()
    assert by_key(at.text_input, "cfg-name").value == "tour"
    assert by_key(at.number_input, "cfg-data-holdout_size").value == 50
    # legal but unwise: the tour's 50 hold-out prompts are warned about, next to Start, linked to the Data section
    assert any("Only 50 hold-out prompts" in w.value and "(#sec-data)" in w.value for w in at.warning)
    assert any(c.value.startswith("Estimated duration: about") for c in at.caption)
    by_key(at.radio, "preset").set_value("custom").run()  # custom keeps the values
    assert by_key(at.text_input, "cfg-name").value == "tour"


def test_launch_problems_are_listed_by_start_and_linked_to_their_fields(db):
    at = app()
    by_key(at.number_input, "cfg-ppo-mini_batch_size").set_value(5).run()
    listed = [e.value for e in at.error if "to fix before the run can start:" in e.value]
    assert listed and "[Responses per gradient step](#sec-ppo)" in listed[0] and "must divide batch_size" in listed[0]
    assert by_key(at.button, "start-run").disabled
    ppo = next(e for e in at.expander if e.label == "PPO settings")
    assert ppo.proto.expanded  # the section holding the problem is open
    # essentials sit outside the expanders: steps and learning rate are drawn once, above
    assert len([w for w in at.number_input if w.key == "cfg-ppo-learning_rate"]) == 1
    assert not [w for w in ppo.number_input if w.key in ("cfg-ppo-learning_rate", "cfg-ppo-max_ppo_steps")]
    assert by_key(at.number_input, "cfg-ppo-learning_rate").label == "Learning rate"
    assert by_key(at.number_input, "cfg-ppo-lam").label == "GAE λ (bias–variance of advantages)"
    assert not any("seed trap" in (w.help or "") or "seed value" in (w.help or "") for w in at.number_input)


def test_first_start_offers_the_tour_and_one_click_queues_it(db):
    at = app()
    assert by_key(at.button, "welcome-tour") and by_key(at.button, "welcome-default")
    by_key(at.button, "welcome-tour").click().run()
    (run,) = db.list_runs()
    assert run.status == "queued" and run.name == "tour"
    cfg = RunConfig.from_yaml(run.config_yaml)
    assert cfg.model.name_or_path == "builtin:tiny-gpt2" and cfg.ppo.max_ppo_steps == 8
    assert at.title[0].value == "Live run" and at.query_params["run"] == run.id
    at = app()  # a store with a run: no welcome panel
    assert not [b for b in at.button if b.key in ("welcome-tour", "welcome-default")]


def test_first_start_queues_the_measured_default(db):
    at = app()
    by_key(at.button, "welcome-default").click().run()
    (run,) = db.list_runs()
    assert RunConfig.from_yaml(run.config_yaml) == RunConfig()


# ---- live ---------------------------------------------------------------------------------------------


def test_live_page_shows_curves_samples_and_cancels(db):
    run_id = db.create_run(RunConfig(name="live").to_yaml(), name="live", total_steps=10)
    db.set_status(run_id, "running")
    for step in (1, 2, 3):
        db.log_metrics(run_id, step, {"objective/kl": 0.1 * step, "objective/kl_coef": 0.2, "time/step_s": 2.0,
                                      "env/reward_mean": 1.0, "env/reward_std": 0.5, "env/reward/profanity": 1.0})
        db.add_samples(run_id, step, [{"prompt": "p", "response": f"r{step}", "reward": 0.5,
                                       "scores": {"profanity": 0.7}}])
    db.set_progress(run_id, 3, 10)
    at = app("live", run_id)
    assert at.title[0].value == "Live run"
    charts = at.get("plotly_chart")
    assert len(charts) == 8
    assert any("step 3/10" in p.proto.text and "ETA ~15 s" in p.proto.text for p in at.get("progress"))
    assert any("18 metric rows · last step 3" in c.value for c in at.caption)
    assert "### Starting: the worker took the run" in [m.value for m in at.markdown]  # plain words, no raw phase
    samples = at.dataframe[0].value  # the only table on the page (a display-only table has no key in AppTest)
    assert list(samples["response"]) == ["r3", "r2", "r1"] and "profanity" in samples.columns

    by_key(at.button, "cancel-run").click().run()  # the confirming button inside the "Cancel run" popover
    assert db.get_run(run_id).cancel_requested
    assert any("Stopping after the current step" in i.value for i in at.info)  # answered in the same rerun


def test_live_page_shows_error_and_traceback(db):
    run_id = db.create_run(RunConfig(name="broken").to_yaml(), name="broken")
    db.set_status(run_id, "running")
    db.set_status(run_id, "failed", error="RuntimeError: out of memory", traceback="Traceback (most recent call last):\n  boom")
    at = app("live", run_id)
    assert "RuntimeError: out of memory" in errors(at)
    assert at.expander[0].label == "Traceback"
    assert "boom" in at.code[0].value
    assert not [b for b in at.button if b.key == "cancel-run"]


def test_live_page_log_expander_reads_the_stored_log(db):
    run_id = db.create_run(RunConfig(name="logged").to_yaml(), name="logged")
    at = app("live", run_id)
    assert any(e.label == "Log: 0 lines" for e in at.expander)  # nothing stored: says so
    db.add_log(run_id, "started", phase="starting")
    db.add_log(run_id, "the judge answered late", level="warning", phase="load")
    db.add_log(run_id, "failed: RuntimeError: boom", level="error", phase="load")
    at = app("live", run_id)
    (log,) = [e for e in at.expander if e.label.startswith("Log:")]
    assert log.label == "Log: 3 lines, 2 warnings or errors"
    text = [c.value for c in at.code][-1]
    assert text.splitlines()[1].endswith("WARNING the judge answered late") and "ERROR failed: RuntimeError" in text


# ---- before / after ------------------------------------------------------------------------------------


def test_before_after_cards_table_and_filters(db):
    run_id = add_finished_run(db, tox_after=0.9)
    at = app("before_after", run_id)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Before"].value == "0.525"
    assert metrics["After"].value == "0.475"
    assert metrics["Change"].value == "-43%"  # (after − before) / before: negative = less toxic
    assert metrics["KL"].value == "1.23"
    assert (metrics["Toxic before"].value, metrics["Toxic after"].value) == ("50%", "25%")
    assert metrics["Std after"].value == "0.300"
    # the result in words; CI of the improvement [-20, 80] %: the change's interval crosses 0, in neutral colour
    assert [i.value for i in at.info][0].startswith("**Toxicity fell 42.9 %, not significant: the 95 % CI")
    assert not at.success and not [e for e in errors(at) if "Toxicity" in e]
    table = by_key(at.dataframe, "ba-table").value
    assert list(table["idx"]) == [0, 1, 2, 3]
    assert list(table["response_after"]) == [f"kind answer {i}" for i in range(4)]
    assert table["change"].tolist() == pytest.approx([-0.7, 0.2, 0.0, 0.3])

    by_key(at.radio, "ba-view").set_value("regressions").run()
    assert list(by_key(at.dataframe, "ba-table").value["idx"]) == [3, 1]  # largest rise first
    by_key(at.radio, "ba-view").set_value("biggest improvements").run()
    assert list(by_key(at.dataframe, "ba-table").value["idx"]) == [0]
    by_key(at.radio, "ba-view").set_value("all")
    by_key(at.text_input, "ba-search").set_value("ANSWER 2").run()
    assert list(by_key(at.dataframe, "ba-table").value["idx"]) == [2]
    captions = [c.value for c in at.caption]
    assert any("n = 4 hold-out prompts" in c for c in captions)
    assert any(c.startswith("1 of 4 prompts") for c in captions)


def test_before_after_says_a_significant_fall_in_green_a_rise_in_red_and_the_split(db):
    run_id = add_finished_run(db)
    summary = db.get_run(run_id).summary
    db.set_summary(run_id, {**summary, "pct_improvement_mean": 68.0, "pct_ci_low": 60.0, "pct_ci_high": 75.0,
                            "split": "validation"})
    at = app("before_after", run_id)
    assert at.success[0].value == ("**Toxicity fell 68.0 % (95 % CI 60–75 %), significant.** Numbers from the "
                                   "**validation** split.")
    db.set_summary(run_id, {**summary, "pct_improvement_mean": -30.0, "pct_ci_low": -50.0, "pct_ci_high": -10.0})
    at = app("before_after", run_id)
    assert at.error[0].value == "**Toxicity rose 30.0 % (95 % CI 10–50 %), significant.**"


def test_before_after_of_a_cancelled_run_says_so(db):
    run_id = db.create_run(RunConfig(name="stopped").to_yaml(), name="stopped", total_steps=5)
    db.set_status(run_id, "running")
    db.add_evaluations(run_id, "before", [{"idx": 0, "prompt": "p", "response": "r", "toxicity": 0.5}])
    db.set_status(run_id, "cancelled")
    at = app("before_after", run_id)
    assert "cancelled before its evaluation finished" in at.warning[0].value
    assert not [i for i in at.info if "appears when the run completes" in i.value]


def test_before_after_counts_responses_when_several_per_prompt(db):
    run_id = add_finished_run(db)
    db.set_summary(run_id, {**db.get_run(run_id).summary, "samples_per_prompt": 2})
    captions = [c.value for c in app("before_after", run_id).caption]
    assert any("n = 4 hold-out responses (2 prompts × 2)" in c for c in captions)
    assert any(c.startswith("4 of 4 responses (2 prompts × 2)") for c in captions)


def test_before_after_says_the_split_and_shows_relevance(db):
    run_id = add_finished_run(db)
    old_captions = [c.value for c in app("before_after", run_id).caption]
    assert any("hold-out prompts (a run from before the test / validation split" in c for c in old_captions)
    db.set_summary(run_id, {**db.get_run(run_id).summary, "split": "test", "relevance_before": 0.412,
                            "relevance_after": 0.398, "relevance_delta": -0.014, "relevance_ci_low": -0.03,
                            "relevance_ci_high": 0.002})
    at = app("before_after", run_id)
    metrics = {m.label: m for m in at.metric}
    assert metrics["Relevance · before"].value == "0.412"
    assert metrics["Relevance · after"].value == "0.398" and metrics["Relevance · after"].delta == "-0.0140"
    assert "[-0.0300, +0.0020]" in metrics["Relevance · after"].help
    assert any("Evaluated on the **test** split (prompts never used to choose settings)" in c.value
               for c in at.caption)


def test_compare_page_shows_split_and_relevance(db):
    ppo = add_evaluated_run(db, "ppo-run", "ppo", [0.2, 0.3, 0.1, 0.2], kl=2.0)
    at = app("compare")
    by_key(at.multiselect, "cmp-runs").set_value([ppo]).run()
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[ppo, "split"] == "hold-out"  # stored before the split existed: no "split" in its summary
    db.set_summary(ppo, {**(db.get_run(ppo).summary or {}), "split": "test"})
    at = app("compare")
    by_key(at.multiselect, "cmp-runs").set_value([ppo]).run()
    assert at.dataframe[0].value.set_index("id").loc[ppo, "split"] == "test"


# ---- runs --------------------------------------------------------------------------------------------


def test_runs_page_lists_compares_and_deletes(db):
    a = add_finished_run(db, name="first")
    b = add_finished_run(db, name="second", tox_after=0.0)
    at = app("runs")
    table = by_key(at.dataframe, "runs-table").value
    assert set(table["id"]) == {a, b}
    row = table.set_index("id").loc[a]
    assert row["status"] == "completed" and row["reward mix"] == "profanity×1 + jigsaw×0.5"
    assert row["model"] == "builtin:smollm2" and row["step"] == "5/5"
    assert math.isclose(row["tox_after"], 0.3) and math.isclose(row["mean_kl"], 1.234)
    # results and key hyperparameters first; change % = (after − before) / before: negative = less toxic
    assert list(table.columns[:13]) == ["name", "status", "change_%", "tox_before", "tox_after", "mean_kl", "live",
                                        "before/after", "learning rate", "steps", "batch", "KL coef", "reward mix"]
    assert row["live"] == f"./live?run={a}" and row["before/after"] == f"./before_after?run={a}"  # row actions
    assert row["change_%"] == pytest.approx(-42.9)
    assert row["learning rate"] == pytest.approx(RunConfig().ppo.learning_rate) and row["steps"] == 28

    order = list(table["id"])
    at.session_state["runs-table"] = {"selection": {"rows": [order.index(a), order.index(b)], "columns": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len([c for c in at.get("plotly_chart")]) == 4  # 3 default curves + before/after bars
    assert set(at.dataframe[1].value["id"]) == {a, b}  # the comparison table, under the runs table
    # only the fields that differ: here none but the name (the diff's own cases: tests/test_results.py)
    assert any("have the same config" in c.value for c in at.caption)

    # each run has its own action row (named), whatever is selected: delete the second one, asking first
    rows = [m.value for m in at.markdown if m.value.startswith("**first**") or m.value.startswith("**second**")]
    assert len(rows) == 2 and all("completed" in r for r in rows)
    assert any(f"`{b}`" in r and "change **" in r for r in rows)
    assert db.get_run(b)  # the popover only asks
    by_key(at.button, f"delete-yes-{b}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with pytest.raises(KeyError):
        db.get_run(b)
    assert [r.id for r in db.list_runs()] == [a]
    assert not [k for k in (getattr(w, "key", None) for w in at.button) if k and k.endswith(b)]  # its row is gone


def test_runs_page_shows_empty_result_cells_while_no_run_has_results(db):
    """A running run evaluated before but not yet after: empty numeric cells where results will come, not "None"."""
    running = db.create_run(RunConfig(name="training").to_yaml(), name="training", total_steps=5)
    db.set_summary(running, {"before": {"mean": 0.05}, "after": {"mean": None}, "pct_improvement_mean": None,
                             "mean_kl": None})  # what a run's summary holds between its evaluations
    at = app("runs")
    assert not at.exception, [e.value for e in at.exception]
    table = by_key(at.dataframe, "runs-table").value.set_index("id")
    for col in ("change_%", "tox_after", "mean_kl"):
        assert pd.api.types.is_float_dtype(table[col]) and math.isnan(table.loc[running, col]), col
    assert table.loc[running, "tox_before"] == pytest.approx(0.05)


def test_runs_page_row_actions_cancel_and_clone(db):
    done = add_finished_run(db, name="finished")
    queued = db.create_run(RunConfig(name="waiting").to_yaml(), name="waiting", total_steps=5)
    at = app("runs")
    assert not at.exception, [e.value for e in at.exception]
    # an active run offers Cancel (no Delete, no Resume); a finished one Delete
    assert by_key(at.button, f"cancel-yes-{queued}") is not None
    assert not [w for w in at.button if w.key in (f"delete-yes-{queued}", f"resume-{queued}")]
    assert by_key(at.button, f"delete-yes-{done}") is not None
    by_key(at.button, f"cancel-yes-{queued}").click().run()
    assert db.get_run(queued).status == "cancelled"
    assert any(i.value == "Cancelled." for i in at.info)  # said on its row
    by_key(at.button, f"clone-{done}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["cfg-name"] == "finished"  # its config is in the Launch form


# ---- playground ------------------------------------------------------------------------------------------


def test_playground_scores_default_texts(db):
    t0 = time.perf_counter()
    at = app("playground")
    assert at.title[0].value == "Reward playground"
    scores = at.dataframe[0].value.set_index("text")
    assert list(scores.index) == ["I like you.", "You are terrible and i hate you."]
    for backend in ("profanity", "jigsaw"):
        tox = scores[f"{backend} toxicity"]
        assert tox["You are terrible and i hate you."] > tox["I like you."]
        reward = scores[f"{backend} reward"]
        assert reward["I like you."] > reward["You are terrible and i hate you."]
    assert not errors(at), errors(at)
    assert time.perf_counter() - t0 < 60


# ---- compare methods -------------------------------------------------------------------------------------


def add_evaluated_run(store: Store, name: str, method: str, after: list[float], prompts: list[str] | None = None,
                      kl: float = 1.0, status: str = "completed") -> str:
    """A finished policy run with before/after rows (length and KL per response, as the runner stores them)."""
    prompts = prompts or [f"hold-out {i}" for i in range(4)]
    run_id = store.create_run(RunConfig(name=name, method=method).to_yaml(), name=name, method=method)
    store.set_status(run_id, "running")
    for phase, values in (("before", [0.9, 0.5, 0.1, 0.6]), ("after", after)):
        store.add_evaluations(run_id, phase, [
            {"idx": i, "prompt": p, "response": f"{phase} answer {i}", "toxicity": t,
             "scores": {"length": 10, "kl": 0.0 if phase == "before" else kl}}
            for i, (p, t) in enumerate(zip(prompts, values, strict=True))])
    store.set_summary(run_id, {"wall_seconds": 30.0})
    store.set_status(run_id, status)
    return run_id


def figure_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_compare_page_without_runs_says_how_to_get_some(db):
    at = app("compare")
    assert at.title[0].value == "Compare methods"
    assert any("No finished policy runs yet" in i.value for i in at.info)


def test_compare_page_table_charts_and_messages(db):
    ppo = add_evaluated_run(db, "ppo-run", "ppo", [0.2, 0.3, 0.1, 0.2], kl=2.0)
    dpo = add_evaluated_run(db, "dpo-run", "dpo", [0.5, 0.5, 0.1, 0.5], kl=0.5)
    other = add_evaluated_run(db, "other-prompts", "rloo", [0.1] * 4, prompts=[f"other {i}" for i in range(4)])
    failed = db.create_run(RunConfig(name="failed-run", method="grpo").to_yaml(), name="failed-run", method="grpo")
    db.set_status(failed, "running")
    db.set_status(failed, "failed", error="RuntimeError: out of memory")
    at = app("compare")
    runs = by_key(at.multiselect, "cmp-runs")
    assert set(runs.value) == {ppo, dpo, other}  # the completed policy runs; the failed one is an option
    assert any(failed in o for o in runs.options)
    assert any("method **reward_model**" in i.value for i in at.info)  # no scorer yet: how to get one
    assert not [s for s in at.selectbox if s.key == "cmp-scorer"]

    runs.set_value([ppo, dpo, other, failed]).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("id")
    assert list(table.index) == [ppo, dpo, other, failed]
    assert table.loc[ppo, "tox_after"] == pytest.approx(0.2) and table.loc[ppo, "mean_kl"] == pytest.approx(2.0)
    assert table.loc[ppo, "tox_change_%"] == pytest.approx(100 * (0.2 - 0.525) / 0.525)
    assert table.loc[other, "same_holdout"] is False and table.loc[failed, "n_prompts"] == 0
    warnings = [w.value for w in at.warning]
    assert any("No hold-out evaluation for failed-run (failed)" in w for w in warnings)
    assert any("other hold-out prompts than ppo-run" in w and "other-prompts" in w for w in warnings)
    titles = figure_titles(at)
    assert titles == ["Mean toxicity of hold-out responses, before / after",
                      "Harmlessness vs KL (front: least KL for its harmlessness)"]
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert bars[0]["x"] == [f"ppo-run ({ppo})<br>ppo", f"dpo-run ({dpo})<br>dpo"]  # the mismatched and the failed run are not drawn
    assert any("Pareto front" in c.value and "ppo-run" in c.value and "dpo-run" in c.value for c in at.caption)


def test_compare_page_scores_helpfulness_once(db, tiny_roberta_classifier_dir):
    ppo = add_evaluated_run(db, "ppo-run", "ppo", [0.2, 0.3, 0.1, 0.2])
    dpo = add_evaluated_run(db, "dpo-run", "dpo", [0.5, 0.5, 0.1, 0.5])
    settings = {"kind": "hf_classifier", "name": "rm", "weight": 1.0, "score_on": "prompt_response",
                "options": {"model": str(tiny_roberta_classifier_dir), "label": "nothate", "max_length": 64}}
    rm = db.create_run(RunConfig(name="rm", method="reward_model").to_yaml(), name="rm", method="reward_model")
    db.set_status(rm, "running")
    db.set_summary(rm, {"model_path": str(tiny_roberta_classifier_dir), "reward_backend": settings,
                        "pairwise_accuracy": 0.625})
    db.set_status(rm, "completed")
    at = app("compare")
    assert by_key(at.selectbox, "cmp-scorer").value == rm
    assert len(db.scores(ppo, f"reward_model:{rm}")) == 8 and len(db.scores(dpo, f"reward_model:{rm}")) == 8
    table = at.dataframe[0].value.set_index("id")
    assert table.loc[ppo, "helpfulness_after"] == pytest.approx(
        db.scores(ppo, f"reward_model:{rm}", "after")["value"].mean())
    assert "Harmlessness vs helpfulness" in figure_titles(at)
    scatter = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                   if json.loads(c.proto.spec)["layout"]["title"]["text"] == "Harmlessness vs helpfulness")
    drawn = {t["name"]: t for t in scatter["data"] if t.get("name")}
    assert {"ppo", "dpo", "before (base model)"} <= set(drawn)
    assert drawn["ppo"]["hovertext"] == [f"ppo-run ({ppo})"]
    at.run()  # a rerun reads the cached scores
    assert not at.exception and len(db.scores(ppo)) == 8


def test_launch_reward_model_then_ppo_links_both_runs(db, worker, tiny_gpt2_dir):
    at = app()
    by_key(at.selectbox, "cfg-method").set_value("reward_model").run()
    then_ppo = by_key(at.checkbox, "cfg-reward_model-then_ppo")  # drawn from the config dataclass, with its help
    assert not then_ppo.value and "queue a PPO run rewarded by the trained model" in then_ppo.help
    assert by_key(at.checkbox, "cfg-reward_model-keep_rewards")
    assert any("then_ppo chains RLHF's two stages" in c.value for c in at.caption)
    assert not [w for w in at.number_input if w.key == "cfg-ppo-max_ppo_steps"]  # PPO's section: only with then_ppo
    by_key(at.checkbox, "cfg-reward_model-keep_rewards").check().run()
    assert any("only applies to the PPO run of then_ppo" in e for e in errors(at))  # shown under the checkbox
    then_ppo = by_key(at.checkbox, "cfg-reward_model-then_ppo")
    then_ppo.check().run()
    assert by_key(at.number_input, "cfg-ppo-max_ppo_steps")

    # a tiny chain from the form: Start opens the reward-model run, which says a PPO run follows it
    by_key(at.selectbox, "cfg-model-choice").set_value("Hugging Face id or local path").run()
    by_key(at.text_input, "cfg-model-custom").set_value(str(tiny_gpt2_dir))
    by_key(at.selectbox, "cfg-data-source_choice").set_value("builtin")
    by_key(at.selectbox, "cfg-evaluator-kind").set_value("profanity")
    by_key(at.number_input, "cfg-data-holdout_size").set_value(4)
    by_key(at.number_input, "cfg-data-validation_size").set_value(0)
    by_key(at.number_input, "cfg-reward_model-max_steps").set_value(1)
    by_key(at.number_input, "cfg-reward_model-batch_size").set_value(2)
    by_key(at.number_input, "cfg-reward_model-eval_pairs").set_value(2)
    by_key(at.number_input, "cfg-reward_model-max_length").set_value(64)
    by_key(at.number_input, "cfg-ppo-batch_size").set_value(2)
    by_key(at.number_input, "cfg-ppo-mini_batch_size").set_value(2)
    by_key(at.number_input, "cfg-ppo-num_generations").set_value(1)
    by_key(at.number_input, "cfg-ppo-max_ppo_steps").set_value(1)
    by_key(at.number_input, "cfg-generation-max_new_tokens").set_value(5)
    by_key(at.text_input, "cfg-name").set_value("chain").run()
    assert not errors(at), errors(at)
    by_key(at.button, "start-run").click().run()
    (rm,) = [r for r in db.list_runs() if r.method == "reward_model"]
    cfg = RunConfig.from_yaml(rm.config_yaml)
    assert (rm.name, cfg.reward_model.then_ppo, cfg.reward_model.keep_rewards) == ("chain", True, True)
    assert at.title[0].value == "Live run" and at.query_params["run"] == rm.id
    notes = [e.value for e in [*at.info, *at.success]]
    assert any(n.startswith("RLHF") and "PPO run" in n for n in notes), notes


def test_live_page_links_a_chains_runs(db):
    rm_cfg = RunConfig(name="hh", method="reward_model")
    rm_cfg.reward_model.then_ppo = True
    rm_id = db.create_run(rm_cfg.to_yaml(), name="hh", method="reward_model")
    ppo_cfg = RunConfig(name="hh-ppo", parent_run=rm_id)
    ppo_id = db.create_run(ppo_cfg.to_yaml(), name="hh-ppo")
    db.set_summary(rm_id, {"pairwise_accuracy": 0.9, "ppo_run": ppo_id})
    for run_id in (rm_id, ppo_id):
        db.set_status(run_id, "running")
        db.set_status(run_id, "completed")
    at = app("live", rm_id)
    assert any(f"PPO run {ppo_id} is queued" in s.value for s in at.success)
    at = app("live", ppo_id)
    assert any(f"rewarded by the reward model of run {rm_id}" in i.value for i in at.info)
    db.set_summary(rm_id, {"ppo_not_queued": "the reward-model run ended failed"})
    at = app("live", rm_id)
    assert any("no PPO run was queued (the reward-model run ended failed)" in w.value for w in at.warning)


def test_launch_says_trl_methods_are_causal_only_next_to_the_method(db, tiny_t5_dir):
    at = app()
    by_key(at.selectbox, "cfg-model-choice").set_value("Hugging Face id or local path").run()
    by_key(at.text_input, "cfg-model-custom").set_value(str(tiny_t5_dir)).run()
    assert not errors(at)  # PPO trains seq2seq policies
    for method, what in (("dpo", "DPOTrainer is causal-only"), ("grpo", "online trainers are causal-only")):
        by_key(at.selectbox, "cfg-method").set_value(method).run()
        method_column = next(c for c in at.columns if any(s.key == "cfg-method" for s in c.selectbox))
        assert any(what in e.value for e in method_column.error), errors(at)  # next to the method ...
        details = next(e for e in at.expander if e.label == "Architecture, precision, device")
        assert details.proto.expanded and any(what in e.value for e in details.error)  # ... and on its field, open
        assert by_key(at.button, "start-run").disabled
    by_key(at.selectbox, "cfg-method").set_value("ppo").run()
    assert not errors(at)


def test_every_page_names_the_run_training_in_the_sidebar(db):
    run_id = db.create_run(RunConfig(name="busy").to_yaml(), name="busy", total_steps=28)
    db.set_status(run_id, "running")
    db.set_progress(run_id, 5, 28)
    for name in ("runs", "before_after"):
        at = app(name, run_id)
        assert "**1 run training**" in [m.value for m in at.sidebar.markdown]
        assert any(link.label == "busy step 5/28" for link in at.sidebar.get("page_link"))
    db.set_status(run_id, "cancelled")
    assert not [m for m in app("runs").sidebar.markdown if "training" in m.value]
