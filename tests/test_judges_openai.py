"""OpenAIJudge against a local fake /v1/chat/completions endpoint, with every HTTP client installed."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from judge_server import FakeJudgeServer

from engine.rewards.openai_judge import OpenAIJudge

API_KEY = "sk-test-FAKEKEY0123456789abcdef"
CLIENTS = [pytest.param(c, marks=pytest.mark.skipif(importlib.util.find_spec(c) is None, reason=f"{c} not installed"))
           for c in ("httpx", "requests")]


@pytest.fixture(scope="module")
def server():
    with FakeJudgeServer(default_reply="+5") as s:
        yield s


@pytest.fixture(params=CLIENTS)
def client(request) -> str:
    return request.param


def make(server, client, **kw) -> OpenAIJudge:
    kw.setdefault("timeout_s", 60)  # generous: only the deadline tests set a short one, on batches of hangs alone
    kw.setdefault("backoff_s", 0.01)
    return OpenAIJudge(base_url=server.url + "/v1", model="judge-model", http_client=client, **kw)


def test_scores_request_shape_and_usage(server, client, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", API_KEY)
    judge = make(server, client, api_key_env="JUDGE_KEY", name="oa", top_p=0.5, max_tokens=9,
                 rubric={"name": "r", "template": "Rate: {response}", "low": -5, "high": 5, "system": "Be fair."})
    assert judge.http_client == client
    tag = f"shape-{client}"
    result = judge.score(["p"] * 3, [f"{tag} a", f"[[reply:Rating: -3, rude]] {tag} b", f"[[reply:4/5]] {tag} c"])
    assert result.scores == [5.0, -3.0, 4.0]
    assert result.raw == {"oa/score": [5.0, -3.0, 4.0], "oa/parse_ok": [1.0, 1.0, 1.0]}
    req = server.requests_for(f"{tag} a")[0]
    assert req.path == "/v1/chat/completions"
    assert req.body == {"model": "judge-model", "temperature": 0.0, "top_p": 0.5, "max_tokens": 9,
                        "messages": [{"role": "system", "content": "Be fair."},
                                     {"role": "user", "content": f"Rate: <response>\n{tag} a\n</response>"}]}
    assert req.headers["Authorization"] == f"Bearer {API_KEY}"
    m = judge.metrics()
    # the fake counts words: usage.prompt_tokens / completion_tokens must be summed as reported
    assert m["judge/oa/calls"] == 3 and m["judge/oa/input_tokens"] == sum(len(r.text.split()) for r in
                                                                          server.requests_for(tag))
    assert m["judge/oa/output_tokens"] == 1 + 3 + 1
    assert "judge/oa/cost_usd" not in m  # no price for this model

    judge = make(server, client, prices={"judge-model": (1.0, 2.0)}, name="priced")
    judge.score(["p"], [f"priced {client}"])
    m = judge.metrics()
    assert m["judge/priced/cost_usd"] == pytest.approx((m["judge/priced/input_tokens"] * 1 + 2) / 1000)


def test_no_key_means_no_authorization_header(server, client, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    make(server, client).score(["p"], [f"nokey-{client}"])
    assert "Authorization" not in server.requests_for(f"nokey-{client}")[0].headers


def test_429_and_5xx_are_retried_with_backoff(server, client):
    judge = make(server, client, name="r", max_attempts=4)
    result = judge.score(["p"] * 2, [f"[[throttle:2]] [[reply:2]] thr-{client}", f"[[error:1]] [[reply:-1]] err-{client}"])
    assert result.scores == [2.0, -1.0]
    assert len(server.requests_for(f"thr-{client}")) == 3 and len(server.requests_for(f"err-{client}")) == 2
    m = judge.metrics()
    assert m["judge/r/retries"] == 3 and m["judge/r/errors"] == 0


def test_giving_up_after_max_attempts_and_4xx_not_retried(server, client):
    judge = make(server, client, name="g", max_attempts=3)
    result = judge.score(["p"] * 2, [f"[[error:99]] always-{client}", f"[[fail:400]] denied-{client}"])
    assert result.scores == [-5.0, -5.0] and result.raw["g/parse_ok"] == [0.0, 0.0]
    assert len(server.requests_for(f"always-{client}")) == 3
    assert len(server.requests_for(f"denied-{client}")) == 1
    m = judge.metrics()
    assert m["judge/g/errors"] == 2 and m["judge/g/retries"] == 2


def test_backoff_grows_exponentially(server, client):
    judge = make(server, client, backoff_s=0.1, max_backoff_s=0.25)
    delays = [judge._backoff(k, None) for k in range(4) for _ in range(20)]
    assert all(0.05 <= d <= 0.1 for d in delays[:20]) and all(0.1 <= d <= 0.2 for d in delays[20:40])
    assert max(delays[40:]) <= 0.25
    assert judge._backoff(0, "0.2") == pytest.approx(0.2)  # Retry-After raises the delay (capped)


def test_malformed_no_score_and_hang(server, client):
    judge = make(server, client, name="m", timeout_s=120)
    result = judge.score(["p"] * 3, [f"[[malformed]] mal-{client}", f"[[reply:no idea]] nos-{client}",
                                     f"[[reply:1]] ok-{client}"])
    assert result.scores == [-5.0, -5.0, 1.0]
    judge.timeout_s = 0.5  # the hang alone: a loaded machine cannot make other calls miss a short deadline
    assert judge.score(["p"], [f"[[hang:30]] hang-{client}"]).scores == [-5.0]  # not the +5 sent after 30 s
    m = judge.metrics()
    assert (m["judge/m/errors"], m["judge/m/parse_failures"], m["judge/m/timeouts"]) == (1, 1, 1)
    judge._pool.shutdown(wait=True)  # the abandoned call has ended
    assert len(server.requests_for(f"hang-{client}")) == 1  # a timed-out call is not retried


def test_concurrent_batch(server, client):
    """Each request waits until 8 are in flight at once (else HTTP 500 after 30 s): no clock involved."""
    judge = make(server, client, name="cc", max_workers=8, timeout_s=120, max_attempts=1)
    result = judge.score(["p"] * 8, [f"[[gather:8]] [[reply:{i - 4}]] together-{client} {i}" for i in range(8)])
    assert result.scores == [float(i - 4) for i in range(8)]


def test_key_never_leaks(server, client, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    judge = make(server, client, name="k")
    judge.score(["p"] * 3, [f"leak-{client}", f"[[error:1]] leak2-{client}", f"[[fail:400]] leak3-{client}"])
    assert server.requests_for(f"leak-{client}")[0].headers["Authorization"] == f"Bearer {API_KEY}"
    for text in [repr(judge), str(judge.metrics()), str(vars(judge)), caplog.text,
                 *(r.getMessage() for r in caplog.records)]:
        assert API_KEY not in text


def test_bad_arguments(client):
    with pytest.raises(ValueError, match="NAME of an environment variable") as e:
        OpenAIJudge(base_url="http://127.0.0.1:1/v1", model="m", api_key_env=API_KEY, http_client=client)
    assert API_KEY not in str(e.value)
    with pytest.raises(ValueError, match="must not contain credentials"):
        OpenAIJudge(base_url="http://user:pw@127.0.0.1:1/v1", model="m", http_client=client)
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAIJudge(base_url="127.0.0.1:8000", model="m", http_client=client)
    with pytest.raises(ValueError, match="backoff_s must be >= 0.0"):
        OpenAIJudge(base_url="http://127.0.0.1:1/v1", model="m", backoff_s=-1, http_client=client)
    with pytest.raises(ValueError, match="http_client must be"):
        OpenAIJudge(base_url="http://127.0.0.1:1/v1", model="m", http_client="curl")
