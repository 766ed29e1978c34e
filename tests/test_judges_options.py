"""Judge options are checked before a run exists: unknown names, credentials, bad values, judge-only rules.

`RunConfig.check()` (hence `engine.runner.run`, the CLI and the Launch page) refuses them by field name,
before anything is registered in the store, and never echoes a value that could be a secret.
"""

from __future__ import annotations

import inspect
import logging

import pytest

from engine.config import ConfigError, RewardBackendSettings, RunConfig
from engine.rewards.bedrock_judge import BedrockJudge
from engine.rewards.judge_options import ACCEPTED, check_options, is_secret_name
from engine.rewards.openai_judge import OpenAIJudge
from engine.runner import run
from engine.store import Store

SECRET_VALUE = "hunter2-TOPSECRET-0123456789"
OPENAI = {"base_url": "http://127.0.0.1:8000/v1", "model": "judge"}


def config_with(kind: str, options: dict, **backend) -> RunConfig:
    cfg = RunConfig()
    base = dict(OPENAI) if kind == "openai_judge" else {}
    cfg.reward.backends = [RewardBackendSettings(kind=kind, name="judge", options={**base, **options}, **backend)]
    return cfg


def errors_of(cfg: RunConfig) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        cfg.check()
    return {err.field: err.message for err in e.value.errors}


@pytest.mark.parametrize("kind", ["bedrock_judge", "openai_judge"])
@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "aws_secret_key", "openai_api_key", "apiKey", "token",
                                  "Authorization", "password", "aws_session_token", "api_key", "X-Api-Key",
                                  "accessKeyId", "bearer"])
def test_secret_like_option_names_are_refused_without_echoing_the_value(kind, name):
    errors = errors_of(config_with(kind, {name: SECRET_VALUE}))
    field = f"reward.backends[0].options.{name}"
    assert "looks like a credential" in errors[field]
    assert SECRET_VALUE not in str(errors)


@pytest.mark.parametrize("name", ["max_tokens", "api_key_env", "top_p", "temperature", "model_id", "timeout_s"])
def test_ordinary_option_names_are_not_secrets(name):
    assert not is_secret_name(name)


def test_a_key_shaped_value_is_refused_in_any_option():
    for value in ("sk-proj-abcdef0123456789", "AKIAABCDEFGHIJKLMNOP"):
        errors = errors_of(config_with("openai_judge", {"model": value}))
        assert "looks like a key" in errors["reward.backends[0].options.model"] and value not in str(errors)


@pytest.mark.parametrize("value", ["sk-live-0123456789abcdef", "MY KEY", "", "1ABC"])
def test_api_key_env_must_be_a_variable_name(value):
    errors = errors_of(config_with("openai_judge", {"api_key_env": value}))
    assert "NAME of an environment variable" in errors["reward.backends[0].options.api_key_env"]
    assert "sk-live" not in str(errors)


@pytest.mark.parametrize("kind, typo, suggestion", [
    ("bedrock_judge", "timout_s", "timeout_s"),
    ("bedrock_judge", "endpoint", "endpoint_url"),
    ("bedrock_judge", "max_worker", "max_workers"),
    ("openai_judge", "endpoint", None),
    ("openai_judge", "base_ur", "base_url"),
    ("openai_judge", "region", None),  # a Bedrock option: not accepted by the OpenAI-compatible judge
])
def test_unknown_options_are_refused_with_a_did_you_mean(kind, typo, suggestion):
    message = errors_of(config_with(kind, {typo: 1}))[f"reward.backends[0].options.{typo}"]
    assert message.startswith(f"unknown option for {kind}")
    assert (f"did you mean {suggestion!r}?" in message) if suggestion else ("accepted: " in message)


@pytest.mark.parametrize("kind, options, field, needle", [
    ("bedrock_judge", {"max_workers": 0}, "options.max_workers", "must be >= 1"),
    ("openai_judge", {"max_workers": 0}, "options.max_workers", "must be >= 1"),
    ("bedrock_judge", {"timeout_s": 0}, "options.timeout_s", "must be > 0.0"),
    ("openai_judge", {"timeout_s": 0}, "options.timeout_s", "must be > 0.0"),
    ("bedrock_judge", {"rubric": "toxic"}, "options.rubric", "unknown built-in rubric 'toxic'"),
    ("bedrock_judge", {"rubric": {"name": "r", "template": "no placeholder", "low": 0, "high": 1}}, "options.rubric",
     "must contain the {response} placeholder"),
    ("bedrock_judge", {"api": "stream"}, "options.api", "must be one of converse, invoke"),
    ("bedrock_judge", {"api": "invoke", "model_id": "meta.llama3-8b-instruct-v1:0"}, "options.api",
     "use api: converse"),
    ("bedrock_judge", {"retry_mode": "fast"}, "options.retry_mode", "must be one of standard, adaptive, legacy"),
    ("bedrock_judge", {"on_unparsed": "midpoint"}, "options.on_unparsed", "must be one of worst, mask"),
    ("openai_judge", {"max_failed_steps": 0}, "options.max_failed_steps", "must be >= 1"),
    ("openai_judge", {"base_url": "localhost:8000"}, "options.base_url", "must be an http(s) URL"),
    ("openai_judge", {"base_url": "http://u:pw@127.0.0.1/v1"}, "options.base_url", "must not contain credentials"),
    ("bedrock_judge", {"fallback": -5}, "options.fallback", "replaced by on_unparsed"),
    ("bedrock_judge", {"temperature": float("nan")}, "options.temperature", "must be a finite number"),
    ("openai_judge", {"name": "other"}, "options.name", "name: next to kind:"),
])
def test_bad_judge_options_are_refused_by_check(kind, options, field, needle):
    errors = errors_of(config_with(kind, options))
    assert needle in errors[f"reward.backends[0].{field}"]


def test_openai_judge_needs_base_url_and_model():
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="openai_judge", options={})]
    errors = errors_of(cfg)
    assert "needs options.base_url" in errors["reward.backends[0].options.base_url"]
    assert "needs options.model" in errors["reward.backends[0].options.model"]


def test_score_on_prompt_response_is_refused_on_a_judge():
    errors = errors_of(config_with("bedrock_judge", {}, score_on="prompt_response"))
    assert "use a rubric with {prompt}" in errors["reward.backends[0].score_on"]


def test_minmax_needs_a_range_on_every_member():
    cfg = config_with("bedrock_judge", {})
    cfg.reward.backends.append(RewardBackendSettings(kind="profanity"))
    cfg.reward.normalize = "minmax"
    assert "reward.backends[1] (profanity, profanity) has none: use zscore or none" in errors_of(cfg)["reward.normalize"]
    cfg.reward.backends.pop()
    cfg.check()  # judges only: their rubrics give the range


def test_good_judge_options_pass():
    config_with("bedrock_judge", {"rubric": "summary_quality", "model_id": "anthropic.claude-3-haiku-20240307-v1:0",
                                  "api": "invoke", "max_workers": 8, "timeout_s": 20, "on_unparsed": "mask",
                                  "max_failed_steps": 2, "prices": {"x": [0.1, 0.2]}}).check()
    config_with("openai_judge", {"api_key_env": "LOCAL_KEY", "http_client": "requests", "cache": False}).check()


def test_a_refused_config_registers_no_run(tmp_path):
    store = Store(tmp_path / "runs.db")
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        run(config_with("bedrock_judge", {"AWS_SECRET_ACCESS_KEY": SECRET_VALUE}), store)
    assert store.list_runs() == []


@pytest.mark.parametrize("kind, cls", [("bedrock_judge", BedrockJudge), ("openai_judge", OpenAIJudge)])
def test_accepted_options_are_the_constructor_arguments(kind, cls):
    assert set(ACCEPTED[kind]) == set(inspect.signature(cls.__init__).parameters) - {"self"}


def test_constructors_refuse_what_check_refuses():
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        OpenAIJudge(base_url="http://127.0.0.1:1/v1", model="m", max_workers=0)
    assert check_options("openai_judge", {**OPENAI, "max_workers": 0}) == [("max_workers", "must be >= 1, got 0")]


def test_unset_api_key_env_is_a_warning_not_an_error(monkeypatch, caplog):
    """Local servers need no key, so an unset variable cannot be an error; a 401/403 then names it."""
    monkeypatch.delenv("UNSET_JUDGE_KEY", raising=False)
    config_with("openai_judge", {"api_key_env": "UNSET_JUDGE_KEY"}).check()
    with caplog.at_level(logging.WARNING):
        OpenAIJudge(base_url="http://127.0.0.1:1/v1", model="m", api_key_env="UNSET_JUDGE_KEY")
    assert "UNSET_JUDGE_KEY is not set" in caplog.text
