"""A real tiny PPO run whose judge cannot give a signal stops as `failed`, with the reason on the run (issue 11).

The policy is the tiny GPT-2 of tests/conftest.py; the judge is the real OpenAI-compatible client against the
local endpoint of tests/judge_server.py, told to answer every request the same way (`always`).
"""

from __future__ import annotations

import pytest
from judge_server import FakeJudgeServer
from test_runner import tiny_config

from engine.config import RewardBackendSettings
from engine.rewards.judge import JudgeFailed
from engine.runner import execute
from engine.store import Store

KEY = "sk-run-LEAKCHECK0123456789abcdef"


def judge_run(tiny_gpt2_dir, tmp_path, server, **options):
    store = Store(tmp_path / "runs.db")
    cfg = tiny_config(tiny_gpt2_dir, tmp_path, steps=6)
    cfg.evaluation.enabled = False
    cfg.reward.backends = [RewardBackendSettings(
        kind="openai_judge", name="claude",
        options={"base_url": server.url + "/v1", "model": "judge", "api_key_env": "RUN_JUDGE_KEY", **options})]
    cfg.check()
    run_id = store.create_run(cfg.to_yaml(), name="judged")
    with pytest.raises(JudgeFailed):
        execute(cfg, store, run_id)
    return store, run_id


def test_a_run_whose_judge_answers_403_fails_at_once_with_the_reason(tiny_gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RUN_JUDGE_KEY", KEY)
    with FakeJudgeServer(always="[[echo:403]]") as server:  # denies everything, echoing what it was sent
        store, run_id = judge_run(tiny_gpt2_dir, tmp_path, server)
        assert len(server.requests) >= 1
    rec = store.get_run(run_id)
    assert rec.status == "failed"
    assert rec.error.startswith("JudgeFailed: judge 'claude' (judge): the endpoint refused the credentials: HTTP 403")
    assert store.metrics_wide(run_id).empty  # stopped in the first step, before any update
    for text in (rec.error, rec.traceback, rec.config_yaml):
        assert KEY not in text


def test_a_run_whose_judge_always_refuses_fails_after_max_failed_steps(tiny_gpt2_dir, tmp_path):
    with FakeJudgeServer(always="[[reply:I'm sorry, I can't help with that.]]") as server:
        store, run_id = judge_run(tiny_gpt2_dir, tmp_path, server, max_failed_steps=2, cache=False)
    rec = store.get_run(run_id)
    assert rec.status == "failed"
    assert "judge 'claude' (judge): 2 consecutive batches without one parsed score (8 calls failed: 8 unparsed)" \
        in rec.error
    assert sorted(store.metrics_wide(run_id).index) == [1]  # step 1 ran (worst scores); step 2 stopped the run
