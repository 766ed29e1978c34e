"""engine.policy.BrowserPolicy: the operator's allow-list for judges and folders, applied on every entry point a
browser reaches (validate_config, Lab.start_run, score_text), with a real listener on 127.0.0.1 for the judges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import api
from engine.config import RewardBackendSettings, RunConfig
from engine.lab_settings import load_settings
from engine.policy import BrowserPolicy
from tests.recording_listener import RecordingListener

SECRET = "sk-test-not-a-real-secret-1234"


def policy_from(tmp_path: Path, text: str = "") -> BrowserPolicy:
    path = tmp_path / "lab_settings.toml"
    path.write_text(text)
    return BrowserPolicy(load_settings(path))


def openai_judge(url: str, key_env: str = "LAB_FAKE_SECRET", model: str = "judge-model") -> RewardBackendSettings:
    return RewardBackendSettings(kind="openai_judge", options={"base_url": url, "model": model,
                                                               "api_key_env": key_env})


def bedrock_judge(endpoint: str | None, region: str = "us-east-1", model: str = "m1") -> RewardBackendSettings:
    options = {"region": region, "model_id": model}
    if endpoint is not None:
        options["endpoint_url"] = endpoint
    return RewardBackendSettings(kind="bedrock_judge", options=options)


def fields(problems) -> list[str]:
    return [p.field for p in problems]


# ---- judges ------------------------------------------------------------------------------------------------


def test_no_judge_at_all_without_an_allow_list(tmp_path):
    policy = policy_from(tmp_path)
    assert fields(policy.backend_problems(openai_judge("http://127.0.0.1:9/v1"), "reward.backends[0]")) == [
        "reward.backends[0].kind"]
    assert fields(policy.backend_problems(bedrock_judge(None), "reward.backends[0]")) == ["reward.backends[0].kind"]
    assert policy.backend_problems(RewardBackendSettings(kind="profanity"), "reward.backends[0]") == []


OPENAI_ALLOWED = """
[[judges.openai]]
base_url = "http://127.0.0.1:8000/v1"
api_key_env = "LAB_FAKE_SECRET"
models = ["judge-model"]

[[judges.openai]]
base_url = "http://judge.internal/v1"
models = ["*"]
"""


@pytest.mark.parametrize("backend, field", [
    (openai_judge("http://127.0.0.1:8000/v1"), None),
    (openai_judge("http://127.0.0.1:8000/v1/"), None),  # the same endpoint, written differently
    (openai_judge("HTTP://127.0.0.1:8000/v1"), None),
    (openai_judge("http://127.0.0.1:8001/v1"), "options.base_url"),
    (openai_judge("http://127.0.0.1:8000/v2"), "options.base_url"),
    (openai_judge("http://admin:pw@127.0.0.1:8000/v1"), "options.base_url"),
    (openai_judge("http://127.0.0.1:8000/v1", key_env="AWS_SECRET_ACCESS_KEY"), "options.api_key_env"),
    (openai_judge("http://127.0.0.1:8000/v1", model="other"), "options.model"),
    (openai_judge("http://judge.internal/v1", key_env="OPENAI_API_KEY", model="any"), None),
    (openai_judge("http://judge.internal:80/v1", key_env="LAB_FAKE_SECRET"), "options.api_key_env"),
    # no api_key_env in the options: the judge reads OPENAI_API_KEY, so that is what must be allowed
    (RewardBackendSettings(kind="openai_judge", options={"base_url": "http://judge.internal/v1", "model": "x"}), None),
    (RewardBackendSettings(kind="openai_judge", options={"base_url": "http://127.0.0.1:8000/v1",
                                                         "model": "judge-model"}), "options.api_key_env"),
])
def test_openai_allow_list(tmp_path, backend, field):
    problems = policy_from(tmp_path, OPENAI_ALLOWED).backend_problems(backend, "reward.backends[1]")
    assert fields(problems) == ([] if field is None else [f"reward.backends[1].{field}"])
    for p in problems:
        assert "lab_settings.toml" in p.message and "AWS_SECRET" not in p.message


BEDROCK_ALLOWED = """
[[judges.bedrock]]
region = "eu-west-1"
models = ["m1"]

[[judges.bedrock]]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:9001"
models = ["*"]
"""


@pytest.mark.parametrize("backend, field", [
    (bedrock_judge(None, region="eu-west-1"), None),
    (bedrock_judge(None, region="eu-west-1", model="m2"), "options.model_id"),
    (bedrock_judge(None, region="us-west-2"), "options.region"),
    (bedrock_judge("http://127.0.0.1:9001", region="us-east-1", model="anything"), None),
    (bedrock_judge("http://127.0.0.1:9002", region="us-east-1"), "options.endpoint_url"),
    (bedrock_judge("http://127.0.0.1:9001", region="eu-west-1"), "options.region"),
])
def test_bedrock_allow_list(tmp_path, backend, field):
    problems = policy_from(tmp_path, BEDROCK_ALLOWED).backend_problems(backend, "reward.backends[0]")
    assert fields(problems) == ([] if field is None else [f"reward.backends[0].{field}"])


def test_playground_never_calls_a_refused_judge_but_the_cli_may(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_FAKE_SECRET", SECRET)
    policy = policy_from(tmp_path)
    with RecordingListener() as ear:
        judge = openai_judge(ear.url + "/v1")
        rows = api.score_text([judge], "hello", policy=policy)
        assert ear.heard == []
        assert "reward.backends[0].kind" in rows[0]["error"]
        # the same call without a policy (a Python / CLI caller) reaches the listener with the key: the
        # setup above would have leaked, so the empty list above is the policy's doing
        api.score_text([judge], "hello")
        assert ear.heard and ear.heard[0].headers.get("Authorization") == f"Bearer {SECRET}"


def test_bedrock_endpoint_refused_before_any_signed_request(tmp_path, monkeypatch):
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret-access-key")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "fake-session-token")
    policy = policy_from(tmp_path, BEDROCK_ALLOWED)
    with RecordingListener() as ear:
        backend = bedrock_judge(ear.url, region="us-east-1")
        rows = api.score_text([backend], "hello", policy=policy)
        assert ear.heard == [] and "options.endpoint_url" in rows[0]["error"]
        api.score_text([backend], "hello")  # no policy: the signed request does arrive
        assert ear.heard and "fake-session-token" in str(ear.heard[0].headers)


def test_start_run_and_validate_refuse_before_anything_is_stored(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = policy_from(tmp_path)
    lab = api.Lab.connect(str(tmp_path / "lab.db"), start_worker=False)
    try:
        with RecordingListener() as ear:
            cfg = RunConfig(name="exfil")
            cfg.data.source = "builtin"
            cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
            cfg.reward.backends = [openai_judge(ear.url + "/v1", key_env="AWS_SECRET_ACCESS_KEY")]
            errors = api.validate_config(cfg, check_data=True, policy=policy)
            assert "reward.backends[0].kind" in errors
            with pytest.raises(api.ConfigError) as exc:
                lab.start_run(cfg.to_yaml(), policy=policy)
            assert "reward.backends[0].kind" in [e.field for e in exc.value.errors]
            assert lab.list_runs() == [] and ear.heard == []
    finally:
        lab.close()


# ---- paths -------------------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A lab whose operator allows data/, models/ and out/ under tmp_path; the server runs from tmp_path."""
    for d in ("data", "models", "out", "elsewhere"):
        (tmp_path / d).mkdir()
    (tmp_path / "data" / "prompts.csv").write_text("prompt\n" + "\n".join(f"prompt number {i} " * 8
                                                                          for i in range(40)))
    (tmp_path / "elsewhere" / "secret.csv").write_text("prompt\nthe server's private text\n")
    (tmp_path / "models" / "m").mkdir()
    (tmp_path / "models" / "m" / "config.json").write_text("{}")
    (tmp_path / "data" / "escape").symlink_to(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    return tmp_path, policy_from(tmp_path, '[paths]\ndata = ["data"]\nmodels = ["models"]\noutputs = ["out"]\n')


@pytest.mark.parametrize("field, value, refused", [
    ("output_dir", "out", False),
    ("output_dir", "out/sub/dir", False),
    ("output_dir", "out/../elsewhere", True),
    ("output_dir", "../../../../tmp/x", True),
    ("output_dir", "/tmp/x", True),
    ("output_dir", "runs", True),
    ("data.source", "data/prompts.csv", False),
    ("data.source", "builtin", False),
    ("data.source", "hub:test", False),
    ("data.source", "/etc/passwd", True),
    ("data.source", "elsewhere/secret.csv", True),
    ("data.source", "data/escape/secret.csv", True),  # a symlink inside data/ pointing out
    ("data.source", "data/../elsewhere/secret.csv", True),
    ("data.source", "/no/such/file.csv", True),
    ("model.name_or_path", "models/m", False),
    ("model.name_or_path", "builtin:tiny-gpt2", False),
    ("model.name_or_path", "gpt2", False),  # a hub id names no file here
    ("model.name_or_path", "/etc", True),
    ("model.name_or_path", "./elsewhere", True),
    ("model.name_or_path", "~/", True),
])
def test_paths_confined_to_the_operators_folders(folders, field, value, refused):
    _, policy = folders
    cfg = RunConfig()
    section, _, name = field.rpartition(".")
    setattr(getattr(cfg, section) if section else cfg, name, value)
    problems = [p for p in policy.config_problems(cfg) if p.field == field]
    assert bool(problems) == refused, problems
    if refused:
        assert "not inside the folders this lab allows" in problems[0].message


def test_refusal_does_not_reveal_whether_a_file_exists(folders):
    _, policy = folders
    messages = []
    for source in ("/etc/passwd", "/etc/no-such-file", "elsewhere/secret.csv", "elsewhere/nope.csv"):
        cfg = RunConfig(data=RunConfig().data)
        cfg.data.source = source
        errors = api.validate_config(cfg, check_data=True, policy=policy)
        messages.append(errors["data.source"])
    assert all(m == messages[0] for m in messages), messages
    assert len(messages[0]) == 1 and "private" not in messages[0][0] and "no such file" not in messages[0][0]


def test_backend_model_paths_confined(folders):
    _, policy = folders
    inside = RewardBackendSettings(kind="hf_classifier", options={"model": "models/m"})
    outside = RewardBackendSettings(kind="hf_classifier", options={"model": "/etc"})
    jigsaw = RewardBackendSettings(kind="jigsaw", options={"model_dir": "../"})
    topic_outside = RewardBackendSettings(kind="topic", options={"model": "/etc"})
    assert fields(policy.backend_problems(topic_outside, "reward.backends[1]")) == ["reward.backends[1].options.model"]
    assert policy.backend_problems(RewardBackendSettings(kind="topic", options={"model": "models/m"}), "x") == []
    assert policy.backend_problems(inside, "reward.backends[0]") == []
    assert fields(policy.backend_problems(outside, "reward.backends[0]")) == ["reward.backends[0].options.model"]
    assert fields(policy.backend_problems(jigsaw, "evaluation.evaluator")) == ["evaluation.evaluator.options.model_dir"]
    cfg = RunConfig()
    cfg.evaluation.evaluator = outside
    assert "evaluation.evaluator.options.model" in api.validate_config(cfg, policy=policy)


def test_cli_keeps_full_freedom(folders):
    tmp, _ = folders
    cfg = RunConfig()
    cfg.output_dir = str(tmp / "elsewhere")
    cfg.data.source = str(tmp / "elsewhere" / "secret.csv")
    assert "output_dir" not in api.validate_config(cfg) and "data.source" not in api.validate_config(cfg)
    assert os.path.isfile(cfg.data.source)
