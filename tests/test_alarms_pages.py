"""The alarms in the UI and the CLI: the Live run page's alarm panel (AppTest), the Runs page's count column, and
`python -m engine show RUN`."""

from __future__ import annotations

from test_pages_apptest import app, db  # noqa: F401 - db is a fixture

from engine.__main__ import main as cli
from engine.config import RunConfig


def run_with_an_alarm(store) -> str:
    run_id = store.create_run(RunConfig(name="hacked").to_yaml(), name="hacked", total_steps=10)
    store.set_status(run_id, "running")
    for step in (1, 2, 3, 4, 5):
        store.log_metrics(run_id, step, {"objective/kl": 0.1 * step, "env/reward_mean": float(step),
                                         "alarm/length_drift/value": 0.2 * step})
        store.add_samples(run_id, step, [{"prompt": "p", "response": f"r{step}", "reward": 0.5}])
    store.add_samples(run_id, 5, [{"prompt": "p", "response": "a very long hacked answer " * 3, "reward": 9.0,
                                   "idx": 6}])
    store.add_alarm(run_id, "length_drift", 5, 4, 0.62, 0.5, "responses are 62% longer than in the first steps",
                    [{"step": 5, "idx": 6}, {"step": 5, "idx": 0}])
    store.set_progress(run_id, 5, 10)
    return run_id


def test_live_page_shows_alarms_with_their_evidence(db):  # noqa: F811
    quiet = db.create_run(RunConfig(name="quiet").to_yaml(), name="quiet", total_steps=10)
    at = app("live", quiet)
    assert not [w for w in at.warning if "length_drift" in w.value]  # no panel without alarms
    assert not [h for h in at.subheader if h.value.startswith("Alarms")]

    run_id = run_with_an_alarm(db)
    at = app("live", run_id)
    assert [h.value for h in at.subheader if h.value.startswith("Alarms")] == ["Alarms (1)"]
    (card,) = [w.value for w in at.warning if "length\\_drift" in w.value or "length_drift" in w.value]
    assert "at step 5 (since step 4)" in card and "value 0.62 vs threshold 0.5" in card
    assert "62% longer" in card
    (exp,) = [e for e in at.expander if e.label.startswith("Evidence")]
    assert exp.label == "Evidence: 2 samples of step 5"
    table = next(d.value for d in at.dataframe if "response" in d.value.columns and len(d.value) == 2)
    assert sorted(table["idx"]) == [0, 6] and "a very long hacked answer" in " ".join(table["response"])


def test_runs_page_counts_alarms_and_cli_show_lists_them(db, capsys):  # noqa: F811
    run_id = run_with_an_alarm(db)
    other = db.create_run(RunConfig(name="clean").to_yaml(), name="clean")
    at = app("runs")
    overview = next(d.value for d in at.dataframe if "alarms" in d.value.columns)
    counts = dict(zip(overview["id"], overview["alarms"], strict=True))
    assert counts[run_id] == 1 and counts[other] == 0

    assert cli(["--db", db.url, "show", run_id]) == 0
    out = capsys.readouterr().out
    assert "alarms (1):" in out
    assert "step 5 (since 4)  length_drift  value 0.62 vs threshold 0.5: responses are 62% longer" in out
    assert "evidence: step 5 #6, step 5 #0" in out
    assert cli(["--db", db.url, "show", other]) == 0
    assert "alarms: none" in capsys.readouterr().out
