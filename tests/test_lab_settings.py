"""engine.lab_settings: the operator's settings file and the loopback rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.lab_settings import (
    NETWORK_OPT_OUT_ENV_VAR,
    SETTINGS_ENV_VAR,
    SettingsError,
    is_loopback,
    load_settings,
    network_problem,
    normalise_url,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(NETWORK_OPT_OUT_ENV_VAR, raising=False)
    monkeypatch.delenv(SETTINGS_ENV_VAR, raising=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_addresses(address):
    assert is_loopback(address)
    assert network_problem(address) is None


@pytest.mark.parametrize("address", ["", None, "0.0.0.0", "::", "192.168.1.4", "example.org", "unix:///tmp/s"])
def test_other_addresses_are_refused_without_opt_out(address):
    assert not is_loopback(address)
    problem = network_problem(address)
    assert problem and NETWORK_OPT_OUT_ENV_VAR in problem and "allow_unauthenticated_network" in problem


def test_opt_out_by_env_or_settings(monkeypatch, tmp_path):
    monkeypatch.setenv(NETWORK_OPT_OUT_ENV_VAR, "1")
    assert network_problem("0.0.0.0") is None
    monkeypatch.setenv(NETWORK_OPT_OUT_ENV_VAR, "0")
    assert network_problem("0.0.0.0")
    path = tmp_path / "lab.toml"
    path.write_text("allow_unauthenticated_network = true\n")
    assert network_problem("0.0.0.0", load_settings(path)) is None


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.source == "defaults" and not s.openai and not s.bedrock and not s.allow_unauthenticated_network
    assert s.output_roots == (tmp_path.resolve() / "runs",)
    assert s.output_roots[0] in s.model_roots


def test_named_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings()


def test_file_is_read_and_relative_paths_are_from_its_folder(tmp_path, monkeypatch):
    path = tmp_path / "conf" / "lab.toml"
    path.parent.mkdir()
    path.write_text("""
[paths]
data = ["data", "/abs/data"]
outputs = ["../out"]

[[judges.openai]]
base_url = "HTTP://Judge.Example:80/v1/"
api_key_env = "JUDGE_KEY"
models = ["m1"]

[[judges.bedrock]]
region = "eu-west-1"
models = ["*"]
""")
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(path))
    s = load_settings()
    assert s.source == "lab.toml"
    assert s.data_roots == (tmp_path.resolve() / "conf" / "data", Path("/abs/data"))
    assert s.output_roots == (tmp_path.resolve() / "out",)
    assert s.openai[0].base_url == "http://judge.example:80/v1" and s.openai[0].api_key_env == "JUDGE_KEY"
    assert s.bedrock[0].region == "eu-west-1" and s.bedrock[0].endpoint_url == ""


@pytest.mark.parametrize("text, match", [
    ("judge = 1", "unknown key"),
    ("[paths]\ndata = 'x'", "list of strings"),
    ("[paths]\nmodel = ['x']", "unknown key"),
    ("[[judges.openai]]\napi_key_env = 'X'", "base_url"),
    ("[[judges.openai]]\nbase_url = 'http://u:p@h/v1'", "credentials"),
    ("[[judges.openai]]\nbase_url = 'ftp://h/v1'", "http"),
    ("[[judges.bedrock]]\nmodels = []", "region"),
    ("allow_unauthenticated_network = 'yes'", "true or false"),
    ("[paths", "not valid TOML"),
])
def test_malformed_files_are_refused(tmp_path, text, match):
    path = tmp_path / "lab.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(path)


def test_normalise_url():
    assert normalise_url("https://A.b/v1/") == "https://a.b:443/v1"
    assert normalise_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    with pytest.raises(ValueError):
        normalise_url("http://h/v1?x=1")


def test_streamlit_config_binds_loopback_and_hides_error_details():
    import tomllib

    conf = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1"
    assert conf["client"]["showErrorDetails"] == "none"  # tracebacks go to the server log, not the browser
