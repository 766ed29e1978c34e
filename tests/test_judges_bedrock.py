"""BedrockJudge with the real boto3 client against a local fake of the Bedrock runtime API.

Scenarios come from directives in the judged text (see tests/judge_server.py). Credentials are
dummies set in the environment, the standard AWS chain the judge must use.
"""

from __future__ import annotations

import logging

import pytest
from judge_server import FakeJudgeServer

from engine.rewards.base import RewardBackend, RewardResult
from engine.rewards.bedrock_judge import BedrockJudge
from engine.rewards.judge_accounting import JudgeAccounting
from engine.rewards.judge_options import check_options

KEY_ID, SECRET, TOKEN = "AKIAFAKEKEYID0000001", "fakeSecretKey/ABCDEF0123456789xyz", "FakeSessionToken0123456789abc"
MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"


@pytest.fixture(scope="module")
def server():
    with FakeJudgeServer(default_reply="+5") as s:
        yield s


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials in the environment, and nothing else of the chain (no ~/.aws, no metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)


def make(server, **kw) -> BedrockJudge:
    kw.setdefault("timeout_s", 60)  # generous: only the deadline tests set a short one, on batches of hangs alone
    return BedrockJudge(endpoint_url=server.url, **kw)


@pytest.mark.parametrize("api", ["converse", "invoke"])
def test_good_scores_and_prose_are_parsed(server, api):
    judge = make(server, api=api, name=f"tox_{api}")
    assert isinstance(judge, RewardBackend)
    responses = [f"I like you. {api} a", f"[[reply:-4]] {api} b", f"[[reply:I'd rate it 3 because it is calm.]] {api} c",
                 f"[[reply:**Rating:** -2]] {api} d"]
    result = judge.score(["prompt"] * 4, responses)
    assert isinstance(result, RewardResult)
    assert result.scores == [5.0, -4.0, 3.0, -2.0]
    assert result.raw == {f"tox_{api}/score": [5.0, -4.0, 3.0, -2.0], f"tox_{api}/parse_ok": [1.0] * 4}
    m = judge.metrics()
    assert m[f"judge/tox_{api}/calls"] == 4 and m[f"judge/tox_{api}/retries"] == 0
    assert m[f"judge/tox_{api}/fallbacks"] == 0
    # token usage comes from the response (the fake counts the user message's words)
    assert m[f"judge/tox_{api}/input_tokens"] > 4 * 6 and m[f"judge/tox_{api}/output_tokens"] >= 4
    expected_cost = (m[f"judge/tox_{api}/input_tokens"] * 0.003 + m[f"judge/tox_{api}/output_tokens"] * 0.015) / 1000
    assert m[f"judge/tox_{api}/cost_usd"] == pytest.approx(expected_cost)
    judge.close()


def test_converse_request_shape(server):
    judge = make(server, rubric={"name": "strict", "template": "Judge: {response}", "low": -5, "high": 5,
                                 "system": "Be strict."}, temperature=0.0, top_p=0.9, max_tokens=7)
    judge.score(["p"], ["shape-check converse"])
    (req,) = server.requests_for("shape-check converse")
    assert req.path == f"/model/{MODEL}/converse"
    assert req.body["messages"] == [{"role": "user", "content": [{"text": "Judge: <response>\nshape-check converse\n"
                                                                          "</response>"}]}]
    assert req.body["inferenceConfig"] == {"maxTokens": 7, "temperature": 0.0, "topP": 0.9}
    assert req.body["system"] == [{"text": "Be strict."}]
    assert req.headers["X-Amz-Security-Token"] == TOKEN  # the env credentials signed the request
    assert f"Credential={KEY_ID}/" in req.headers["Authorization"]


def test_invoke_request_shape(server):
    judge = make(server, api="invoke", max_tokens=300)
    judge.score(["p"], ["shape-check invoke"])
    (req,) = server.requests_for("shape-check invoke")
    assert req.path == f"/model/{MODEL}/invoke"
    body = req.body
    assert body["anthropic_version"] == "bedrock-2023-05-31"
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (300, 0.0, 1.0)
    assert body["messages"][0]["role"] == "user"
    assert "Rate the toxicity" in body["messages"][0]["content"][0]["text"]
    assert "-5 (high toxicity)" in body["system"]  # the instructions travel as the system prompt


def test_summary_quality_rubric_sends_prompt_and_reads_decimal(server):
    judge = make(server, rubric="summary_quality")
    result = judge.score(["Summarize the following conversation.\n\nHuman: hi sq-check"],
                         ["[[reply:Score: 4.25\nAccurate and coherent; covers the greeting.]]"])
    assert result.scores == [4.25]
    (req,) = server.requests_for("hi sq-check")
    assert "Human: hi sq-check" in req.body["messages"][0]["content"][0]["text"]


@pytest.mark.parametrize("api", ["converse", "invoke"])
def test_no_score_and_malformed_json_get_the_worst_score(server, api):
    judge = make(server, api=api, name="j")
    result = judge.score(["p"] * 3, [f"[[reply:I will not rate this.]] {api}", f"[[malformed]] {api}", f"ok {api}"])
    assert result.scores == [-5.0, -5.0, 5.0] and result.valid == [False, False, True]
    assert result.raw["j/parse_ok"] == [0.0, 0.0, 1.0]
    m = judge.metrics()
    assert (m["judge/j/parse_failures"], m["judge/j/errors"], m["judge/j/fallbacks"]) == (1, 1, 2)


def test_unparsed_scores_the_rubrics_worst_by_default(server):
    assert make(server).worst == -5.0 and make(server).on_unparsed == "worst"
    assert make(server, rubric="summary_quality").worst == 1.0
    assert check_options("bedrock_judge", {"fallback": 0}) == [
        ("fallback", "replaced by on_unparsed: worst (the rubric's worst score, the default) or mask")]
    with pytest.raises(ValueError, match="on_unparsed must be one of worst, mask"):
        make(server, on_unparsed="midpoint")


@pytest.mark.parametrize("api", ["converse", "invoke"])
def test_throttling_is_retried_and_counted(server, api):
    # A deadline no backoff or loaded machine can reach: the test counts retries, it does not time them.
    judge = make(server, api=api, name="t", max_attempts=4, timeout_s=120)
    text = f"[[throttle:1]] [[reply:-3]] throttle-{api}"
    result = judge.score(["p"], [text])
    assert result.scores == [-3.0] and result.raw["t/parse_ok"] == [1.0]
    assert len(server.requests_for(f"throttle-{api}")) == 2  # one 429, then the answer
    m = judge.metrics()
    assert m["judge/t/retries"] == 1 and m["judge/t/errors"] == 0 and m["judge/t/calls"] == 1


def test_throttling_past_max_attempts_falls_back_with_retries_counted(server):
    judge = make(server, name="t", max_attempts=2, timeout_s=120)
    result = judge.score(["p"], ["[[throttle:9]] always-throttled"])
    assert result.scores == [-5.0] and result.raw["t/parse_ok"] == [0.0]
    assert len(server.requests_for("always-throttled")) == 2
    m = judge.metrics()
    assert m["judge/t/errors"] == 1 and m["judge/t/retries"] == 1


def test_validation_error_is_not_retried(server):
    judge = make(server, name="v")
    assert judge.score(["p"], ["[[fail:400]] bad-request"]).scores == [-5.0]
    assert len(server.requests_for("bad-request")) == 1
    assert judge.metrics()["judge/v/errors"] == 1


def test_a_hang_gets_the_worst_score_at_the_deadline_and_is_not_retried(server):
    judge = make(server, name="h", timeout_s=0.5, max_attempts=5)
    result = judge.score(["p"], ["[[hang:30]] hang-a"])  # alone: a loaded machine cannot make others miss 0.5 s
    assert result.scores == [-5.0] and result.raw["h/parse_ok"] == [0.0]  # not the +5 it sends after 30 s
    assert judge.metrics()["judge/h/timeouts"] == 1
    judge._pool.shutdown(wait=True)  # the abandoned call has ended (its read timed out)
    assert len(server.requests_for("hang-a")) == 1  # and was not retried


def test_calls_run_concurrently(server):
    """Each request waits until 8 are in flight at once (else HTTP 500 after 30 s): no clock involved."""
    judge = make(server, name="cc", max_workers=8, timeout_s=120, max_attempts=1)
    result = judge.score(["p"] * 8, [f"[[gather:8]] [[reply:{i - 4}]] together {i}" for i in range(8)])
    assert result.scores == [float(i - 4) for i in range(8)]


def test_cache_dedupes_and_serves_repeats(server):
    judge = make(server, name="c")
    r1 = judge.score(["p"] * 3, ["[[reply:-2]] cache-x", "[[reply:-2]] cache-x", "[[reply:4]] cache-y"])
    r2 = judge.score(["p"], ["[[reply:-2]] cache-x"])
    assert r1.scores == [-2.0, -2.0, 4.0] and r2.scores == [-2.0]
    assert len(server.requests_for("cache-x")) == 1
    m = judge.metrics()
    assert m["judge/c/calls"] == 2 and m["judge/c/cache_hits"] == 2

    nocache = make(server, name="n", cache=False)
    nocache.score(["p"] * 2, ["[[reply:1]] nocache-z"] * 2)
    assert len(server.requests_for("nocache-z")) == 2


def test_failures_are_not_cached(server):
    judge = make(server, name="f")
    judge.score(["p"], ["[[malformed]] not-cached"])
    judge.score(["p"], ["[[malformed]] not-cached"])
    assert len(server.requests_for("not-cached")) == 2


def test_credentials_never_leak(server, caplog):
    caplog.set_level(logging.DEBUG)  # botocore prints signed requests at DEBUG
    judge = make(server, name="secretcheck")
    judge.score(["p"] * 3, ["leak-check", "[[throttle:1]] leak-check 2", "[[malformed]] leak-check 3"])
    assert server.requests_for("leak-check")[0].headers["X-Amz-Security-Token"] == TOKEN  # they were used
    texts = [repr(judge), str(judge.metrics()), str(vars(judge))]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert len(caplog.records) > 10
    for secret in (KEY_ID, SECRET, TOKEN):
        for t in texts:
            assert secret not in t


def test_no_credentials_is_a_clear_error(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    with pytest.raises(ValueError, match="no AWS credentials found"):
        BedrockJudge(endpoint_url="http://127.0.0.1:9")


@pytest.mark.parametrize("kwargs, message", [
    ({"api": "stream"}, "api must be one of converse, invoke"),
    ({"api": "invoke", "model_id": "meta.llama3-8b-instruct-v1:0"}, "use api: converse"),
    ({"max_workers": 0}, "max_workers must be >= 1"),
    ({"timeout_s": 0}, "timeout_s must be > 0"),
    ({"top_p": 1.5}, "top_p must be <= 1.0"),
    ({"max_attempts": 2.5}, "max_attempts must be a finite integer"),
    ({"rubric": "nope"}, "unknown built-in rubric"),
])
def test_bad_arguments(server, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(server, **kwargs)


def test_accounting_percentiles_cost_and_threads():
    acc = JudgeAccounting("a", "some.unpriced-model", prices={"x.model": {"input": 1.0, "output": 2.0}})
    assert acc.cost_usd() is None and "judge/a/cost_usd" not in acc.snapshot()
    import threading

    def work():
        for i in range(1, 101):
            acc.record_call(i / 100, "ok" if i % 10 else "parse_failure")
            acc.add_usage(10, 1, 0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = acc.snapshot()
    assert snap["judge/a/calls"] == 400 and snap["judge/a/parse_failures"] == 40
    assert snap["judge/a/input_tokens"] == 4000 and snap["judge/a/fallbacks"] == 40
    assert snap["judge/a/p50_latency_s"] == pytest.approx(0.505)
    assert snap["judge/a/p95_latency_s"] == pytest.approx(0.95, abs=0.01)

    priced = JudgeAccounting("b", "x.model", prices={"x.model": (1.0, 2.0)})
    priced.add_usage(1500, 500, 0)
    assert priced.snapshot()["judge/b/cost_usd"] == pytest.approx(1.5 + 1.0)
    assert JudgeAccounting("c", "us.anthropic.claude-3-haiku-20240307-v1:0").price == (0.00025, 0.00125)
    with pytest.raises(ValueError, match=r"prices\['m'\] input must be a finite number >= 0"):
        JudgeAccounting("d", "m", prices={"m": (-1, 0)})


def test_empty_batch_and_bad_inputs(server):
    judge = make(server, name="e")
    assert judge.score([], []) == RewardResult([], {"e/score": [], "e/parse_ok": []}, valid=[])
    with pytest.raises(ValueError, match="2 prompts for 1 responses"):
        judge.score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match=r"responses\[1\] must be a str, got NoneType"):
        judge.score(["a", "b"], ["x", None])
    assert judge.metrics()["judge/e/calls"] == 0
