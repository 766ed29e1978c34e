"""A run's stored log (engine.run_log, Store.add_log / logs, revision 0005_run_logs) and the watch signature a Live
page compares (engine.api.watch_signature): on SQLite and PostgreSQL, and written by a real tiny run."""

from __future__ import annotations

import logging
import warnings

import pytest

from engine.api import signature_token, watch_signature
from engine.config import RunConfig
from engine.progress import Progress
from engine.run_log import RunLog
from engine.runner import execute
from engine.store import MAX_LOG_CHARS, Store, new_owner_id
from tests.test_runner import tiny_config


def test_log_lines_are_stored_in_order_read_incrementally_and_deleted_with_the_run(store_url):
    with Store(store_url) as store:
        run_id = store.create_run("a: 1", name="logged")
        other = store.create_run("a: 1", name="other")
        store.add_log(run_id, "loading the policy", phase="load")
        store.add_log(other, "not mine")
        store.add_log(run_id, "slow disk\nsecond line", level="warning", phase="load")
        store.add_log(run_id, "x" * (MAX_LOG_CHARS + 50) + "\x00", level="error")  # NUL: PostgreSQL refuses it
        lines = store.logs(run_id)
        assert list(lines.columns) == ["id", "time", "level", "phase", "message"]
        assert lines["level"].tolist() == ["info", "warning", "error"]
        assert lines["message"].iloc[1] == "slow disk\nsecond line"  # line breaks kept
        assert len(lines["message"].iloc[2]) == MAX_LOG_CHARS and lines["message"].iloc[2].endswith("…")
        assert lines["phase"].tolist()[:2] == ["load", "load"] and lines["phase"].iloc[2] is None
        assert all(t.tzinfo is not None for t in lines["time"])
        first = int(lines["id"].iloc[0])
        assert store.logs(run_id, since_id=first)["message"].tolist()[0] == "slow disk\nsecond line"
        assert store.logs(run_id, last_n=1)["level"].tolist() == ["error"]
        assert store.watch_marks(run_id) == (0, int(lines["id"].iloc[-1]))
        with pytest.raises(ValueError, match="level"):
            store.add_log(run_id, "?", level="debug")
        with pytest.raises(KeyError):
            store.add_log("r-none", "?")
        store.set_status(run_id, "cancelled")
        store.delete_run(run_id)
        with pytest.raises(KeyError):
            store.logs(run_id)
        assert store.logs(other)["message"].tolist() == ["not mine"]  # only the deleted run's lines went


def test_watch_signature_changes_with_what_the_page_shows_not_with_the_heartbeat(store_url):
    with Store(store_url, owner=new_owner_id("test"), lease_s=60) as store:
        run_id = store.create_run(RunConfig(name="w").to_yaml(), name="w", total_steps=5)
        store.claim_run(run_id)
        try:
            base = watch_signature(store, run_id)
            store.beat()  # a heartbeat alone: nothing new to draw
            assert watch_signature(store, run_id) == base
            store.log_metrics(run_id, 1, {"objective/kl": 0.1})
            with_row = watch_signature(store, run_id)
            assert with_row != base
            store.add_log(run_id, "a warning", level="warning")
            with_line = watch_signature(store, run_id)
            assert with_line != with_row
            store.set_progress(run_id, 1, 5)
            assert watch_signature(store, run_id) != with_line
            stepped = watch_signature(store, run_id)
            store.note_progress(run_id, "train", "step 1/5")
            store.beat()  # the heartbeat writes the phase and message
            assert watch_signature(store, run_id) != stepped
            assert signature_token(base) != signature_token(with_row) and len(signature_token(base)) == 16
            with pytest.raises(KeyError):
                watch_signature(store, "r-none")
        finally:
            store.set_status(run_id, "cancelled")
        ended = watch_signature(store, run_id)
        assert ended[0] == "cancelled" and ended[1:3] == ("", "")


def test_a_late_heartbeat_changes_the_signature(tmp_path):
    with Store(tmp_path / "s.db", owner=new_owner_id("test"), lease_s=60) as store:
        run_id = store.create_run(RunConfig(name="w").to_yaml(), name="w")
        store.claim_run(run_id)
        fresh = watch_signature(store, run_id)
        store.abandon(run_id)  # stops heartbeating it, as a dead process would
        with store.engine.begin() as conn:
            from sqlalchemy import text

            conn.execute(text("UPDATE runs SET heartbeat_at = '2000-01-01 00:00:00' WHERE id = :i"), {"i": run_id})
        assert watch_signature(store, run_id)[-1] is True and watch_signature(store, run_id) != fresh


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_each_phase_at_once_a_long_phase_every_n_seconds(tmp_path):
    with Store(tmp_path / "s.db") as store:
        run_id = store.create_run("a: 1")
        clock = Clock()
        rlog = RunLog(store, run_id, every_s=30, clock=clock)
        rlog.progress(Progress("load", message="loading the reward backends"))
        clock.t += 1
        rlog.progress(Progress("load", message="loading the policy"))  # a new kind of message: at once
        for done in range(1, 801):  # an 800-response evaluation, 1/8 s a response (exact in binary)
            clock.t += 0.125
            rlog.progress(Progress("eval_before", done, 800, f"evaluating before: {done}/800 responses"))
        clock.t += 1
        rlog.progress(Progress("train", 0, 3, "PPO on 40 prompts"))
        lines = store.logs(run_id)
        messages = lines["message"].tolist()
        assert messages[:3] == ["loading the reward backends", "loading the policy",
                                "evaluating before: 1/800 responses"]
        # 100 s of evaluation: a line every 30 s, then how it ended when the phase changed, then the new phase
        assert messages[3:] == ["evaluating before: 241/800 responses", "evaluating before: 481/800 responses",
                                "evaluating before: 721/800 responses", "evaluating before: 800/800 responses",
                                "PPO on 40 prompts"]
        assert lines["phase"].tolist() == ["load"] * 2 + ["eval_before"] * 5 + ["train"]


def test_warnings_and_errors_of_the_process_are_stored_only_while_capturing(tmp_path):
    with Store(tmp_path / "s.db") as store:
        run_id = store.create_run("a: 1")
        rlog = RunLog(store, run_id)
        chatty = logging.getLogger("httpx")
        saved, chatty.level = chatty.level, logging.INFO
        with rlog.capturing():
            logging.getLogger("engine.somewhere").warning("the judge answered %d times late", 3)
            logging.getLogger("engine.assets").info("building the tiny policy (once)")
            logging.getLogger("httpx").info("HTTP Request: POST ...")  # another library's chatter: not stored
            try:
                raise OSError("disk full")
            except OSError:
                # a library's error (not torch's own logger: importing parts of torch turns its propagation off)
                logging.getLogger("some.library").exception("could not save")
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("generation flags are not valid", UserWarning, stacklevel=1)
        chatty.setLevel(saved)
        logging.getLogger("engine.somewhere").warning("after the run")
        lines = store.logs(run_id)
        assert lines["message"].tolist() == ["the judge answered 3 times late", "building the tiny policy (once)",
                                             "could not save (OSError: disk full)",
                                             "UserWarning: generation flags are not valid"]
        assert lines["level"].tolist() == ["warning", "info", "error", "warning"]


def test_a_line_that_cannot_be_stored_never_fails_the_run(tmp_path):
    with Store(tmp_path / "s.db") as store:
        rlog = RunLog(store, "r-gone")  # no such run: every write fails
        rlog.line("hello")
        rlog.progress(Progress("load", message="x"))
        assert rlog.failures == 2


def test_a_real_run_keeps_its_log_after_it_ends(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=2)
    run_id = store.create_run(cfg.to_yaml(), name="logged")
    execute(cfg, store, run_id)
    store.close()
    with Store(tmp_path / "runs.db") as again:  # another process's view, after the run's store closed
        lines = again.logs(run_id)
    messages = lines["message"].tolist()
    assert messages[0] == "started" and messages[-1] == "completed"
    assert any(m.startswith("loading the policy") for m in messages)
    assert any(m.startswith("evaluating before:") for m in messages)
    phases = lines["phase"].tolist()
    for phase in ("starting", "data", "load", "eval_before", "train", "eval_after", "done"):
        assert phase in phases, phase


def test_a_failed_run_logs_its_error(tiny_gpt2_dir, tmp_path):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=2)
    cfg.model.name_or_path = str(tmp_path / "no-model-here")
    run_id = store.create_run(cfg.to_yaml(), name="fails")
    with pytest.raises(Exception):  # noqa: B017 (whatever transformers raises for a missing folder)
        execute(cfg, store, run_id)
    last = store.logs(run_id).iloc[-1]
    assert last["level"] == "error" and last["message"].startswith("failed: ")
    store.close()
