"""The bad-input table of issue 15: every case is refused by the API (`Lab.start_run`, which validates with
engine.config and, for the browser cases, engine.policy) before anything is registered in the store, with the
field named and no traceback or long echo in the message. Each case has an id; `pytest --collect-only -q
tests/test_bad_inputs.py` counts them. A last group runs the CLI (`python -m engine ...` in-process) on the
inputs that used to print tracebacks.
"""

from __future__ import annotations

import copy
import re

import pytest

from engine import api
from engine.config import ConfigError, RunConfig
from engine.lab_settings import load_settings
from engine.policy import BrowserPolicy

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
INF, NAN = float("inf"), float("nan")

ALIAS_BOMB = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n" + "\n".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)) + "\n" + (
    "# " + "padding " * 280 + "\n")  # 2.6 KB, as in the issue: would expand to 9^9 strings


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


# (kind, payload, expected field, env) — kinds:
#   yaml: the text of a config file; bytes: an uploaded / read file; set: {dotted field: value} over a valid base;
#   browser: like set, validated with the browser policy (operator folders under tmp, no judges);
#   source: the text of a data file that data.source then names.
CASES = [
    # ---- YAML and files -----------------------------------------------------------------------------------
    ("yaml", ALIAS_BOMB, "<yaml>", None, "alias-bomb-2.6KB"),
    ("yaml", "name: &n x\nppo:\n  seed: 1\nevaluation:\n  seed: *n\n", "<yaml>", None, "single-alias"),
    ("yaml", "base: &b {batch_size: 4}\nppo:\n  <<: *b\n", "<yaml>", None, "merge-key"),
    ("yaml", "ppo: {batch_size: 4}\nppo: {batch_size: 8}\n", "<yaml>", None, "duplicate-section"),
    ("yaml", "ppo:\n  batch_size: 4\n  batch_size: 8\n", "<yaml>", None, "duplicate-field"),
    ("yaml", "", "<file>", None, "empty-file"),
    ("yaml", "   \n\n\t\n", "<file>", None, "whitespace-only"),
    ("yaml", "# only a comment\n", "<file>", None, "comments-only"),
    ("yaml", "- ppo\n- dpo\n", "<yaml>", None, "top-level-list"),
    ("yaml", "42\n", "<yaml>", None, "top-level-scalar"),
    ("yaml", "x: " + "[" * 50_000 + "]" * 50_000, "<yaml>", None, "nested-list-50000"),
    ("yaml", "x: " + "{a: " * 2_000 + "1" + "}" * 2_000, "<yaml>", None, "nested-mapping-2000"),
    ("yaml", "ppo: [unclosed", "<yaml>", None, "unclosed-bracket"),
    ("yaml", "ppo:\n\tbatch_size: 4\n", "<yaml>", None, "tab-indent"),
    ("yaml", "name: a\x00b\n", "<yaml>", None, "raw-nul"),
    ("yaml", "name: x\n" + "# " + "x" * 1_100_000 + "\n", "<file>", None, "over-1MB-text"),
    ("yaml", "ppo: !!python/object/apply:os.system ['true']\n", "<yaml>", None, "python-tag"),
    ("yaml", "ppo_typo: {}\n", "ppo_typo", None, "unknown-section"),
    ("yaml", "ppo: {learning_rat: 1e-5}\n", "ppo.learning_rat", None, "unknown-field-typo"),
    ("yaml", "k" * 10_000 + ": 1\n", "<yaml>", None, "10k-char-key-yaml"),
    ("set", {"ppo": {"k" * 10_000: 1}}, "ppo.'kkk*", None, "10k-char-key-cut-in-the-field-name"),
    ("yaml", "ppo: [1, 2]\n", "ppo", None, "section-is-list"),
    ("yaml", "ppo: 3\n", "ppo", None, "section-is-scalar"),
    ("yaml", "reward: {backends: [{kind: profanity, options: [1, 2]}]}\n", "reward.backends[0].options", None,
     "options-list"),
    ("yaml", "reward: {backends: [{kind: profanity, options: transform}]}\n", "reward.backends[0].options", None,
     "options-string"),
    ("yaml", "reward: {backends: [{kind: profanity, options: {1: 2}}]}\n", "reward.backends[0].options", None,
     "options-int-keys"),
    ("yaml", "reward: {backends: {kind: profanity}}\n", "reward.backends", None, "backends-mapping"),
    ("yaml", "reward: {backends: [3]}\n", "reward.backends[0]", None, "backend-scalar"),
    ("yaml", "generation: {temperature: .inf}\n", "generation.temperature", None, "yaml-inf-temperature"),
    ("yaml", "generation: {temperature: .nan}\n", "generation.temperature", None, "yaml-nan-temperature"),
    ("yaml", "ppo: {vf_coef: .Inf}\n", "ppo.vf_coef", None, "yaml-inf-vf_coef"),
    ("yaml", "ppo: {learning_rate: 1e400}\n", "ppo.learning_rate", None, "yaml-1e400-string"),
    ("yaml", "reward: {backends: [{kind: profanity, weight: .inf}]}\n", "reward.backends[0].weight", None,
     "yaml-inf-weight"),
    ("yaml", 'name: "a\\0b"\n', "name", None, "escaped-nul-name"),
    ("yaml", 'name: "line\\nforged line"\n', "name", None, "escaped-newline-name"),
    ("bytes", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "<file>", None, "binary-png"),
    ("bytes", "name: caf\xe9\n".encode("latin-1"), "<file>", None, "latin1-bytes"),
    ("bytes", "name: x\n".encode("utf-16"), "<file>", None, "utf16-bytes"),
    ("bytes", b"name: x\n#" + b"x" * 1_100_000, "<file>", None, "over-1MB-bytes"),
    ("bytes", b"", "<file>", None, "empty-bytes"),
    # ---- non-finite numbers in every kind of float field ---------------------------------------------------
    *[("set", {f: v}, f, None, f"{f}-{'inf' if v == INF else '-inf' if v == -INF else 'nan'}") for f, v in [
        ("generation.temperature", INF), ("generation.temperature", -INF), ("generation.top_p", NAN),
        ("ppo.vf_coef", INF), ("ppo.cliprange_value", INF), ("ppo.kl_target", INF), ("ppo.init_kl_coef", NAN),
        ("ppo.learning_rate", INF), ("ppo.lam", NAN), ("ppo.gamma", NAN), ("ppo.max_grad_norm", INF),
        ("ppo.cliprange", NAN), ("evaluation.toxic_threshold", NAN), ("dpo.beta", INF),
        ("dpo.label_smoothing", NAN), ("dpo.learning_rate", INF), ("online.beta", INF), ("online.epsilon", NAN),
        ("online.learning_rate", NAN), ("ai_preferences.min_margin", INF), ("model.lora.dropout", NAN),
        ("reward_model.learning_rate", INF), ("reward_model.max_grad_norm", NAN),
        ("reward.backends[0].weight", NAN), ("evaluation.evaluator.weight", INF)]],
    # ---- absurd sizes --------------------------------------------------------------------------------------
    *[("set", {f: v}, f, None, f"{f}-{v}") for f, v in [
        ("evaluation.bootstrap_samples", 10**12), ("generation.max_new_tokens", 10**9),
        ("generation.max_new_tokens", 0), ("ppo.batch_size", 10**9), ("ppo.mini_batch_size", 10**9),
        ("ppo.max_ppo_steps", 10**12), ("ppo.kl_horizon", 10**15), ("data.holdout_size", 10**9),
        ("data.train_size", 10**12), ("data.max_prompt_tokens", 10**6), ("evaluation.batch_size", 10**7),
        ("evaluation.samples_per_prompt", 10**4), ("generation.top_k", 10**9), ("ppo.seed", -1),
        ("ppo.seed", 2**64), ("data.max_chars", 10**12), ("ppo.samples_per_step", 10**6),
        ("reward.backends[0].weight", 10**300), ("ppo.num_generations", 10**6), ("ai_preferences.num_prompts", 10**12),
        ("dpo.max_steps", 10**12), ("online.num_generations", 10**6), ("evaluation.seed", 2**40)]],
    ("set", {"model.lora.enabled": True, "model.lora.r": 10**6}, "model.lora.r", None, "lora-r-1e6"),
    ("set", {"generation.min_length": 40, "generation.max_new_tokens": 8}, "generation.min_length", None,
     "min_length-over-max"),
    ("set", {"ppo.mini_batch_size": 5}, "ppo.mini_batch_size", None, "mini-batch-not-dividing"),
    # ---- wrong types ---------------------------------------------------------------------------------------
    ("set", {"ppo.batch_size": "sixteen"}, "ppo.batch_size", None, "int-as-word"),
    ("set", {"ppo.batch_size": 16.5}, "ppo.batch_size", None, "int-as-float"),
    ("set", {"ppo.batch_size": True}, "ppo.batch_size", None, "int-as-bool"),
    ("set", {"name": ["a", "b"]}, "name", None, "name-list"),
    ("set", {"generation.do_sample": "maybe"}, "generation.do_sample", None, "bool-as-word"),
    ("set", {"model.name_or_path": 123}, "model.name_or_path", None, "model-int"),
    ("set", {"reward.normalize": "maxmin"}, "reward.normalize", None, "normalize-unknown"),
    ("set", {"method": "sft"}, "method", None, "method-unknown"),
    ("set", {"reward.backends[0].kind": "oracle"}, "reward.backends[0].kind", None, "reward-kind-unknown"),
    ("set", {"reward.backends[0].weight": 0.0}, "reward.backends", None, "weights-sum-0"),
    ("set", {"reward.backends": []}, "reward.backends", None, "no-backends"),
    ("set", {"evaluation.evaluator.kind": "openai_judge", "evaluation.evaluator.options": {
        "base_url": "http://127.0.0.1:9/v1", "model": "m"}}, "evaluation.evaluator.kind", None, "judge-evaluator"),
    # ---- names ---------------------------------------------------------------------------------------------
    *[("set", {"name": v}, "name", None, f"name-{label}") for label, v in [
        ("newline", "run\nforged"), ("nul", "a\x00b"), ("rtl-override", "evil\u202etxt.yaml"),
        ("100k-chars", "n" * 100_000), ("201-chars", "n" * 201), ("empty", ""), ("blank", "   "),
        ("ansi-escape", "\x1b[31mred"), ("zero-width", "a\u200bb"), ("line-separator", "a\u2028b"),
        ("carriage-return", "ok\rforged"), ("bell", "a\x07")]],
    ("set", {"reward.backends[0].name": "judge\nforged"}, "reward.backends[0].name", None, "backend-name-newline"),
    ("set", {"reward.backends[0].name": "a/b"}, "reward.backends", None, "backend-name-slash"),
    ("set", {"parent_run": "x\ny"}, "parent_run", None, "parent-run-newline"),
    # ---- templates -----------------------------------------------------------------------------------------
    *[("set", {"data.template": v}, "data.template", None, f"template-{label}") for label, v in [
        ("extra-placeholder", "{dialogue} and {x}"), ("unbalanced-open", "Summarize {dialogue"),
        ("unbalanced-close", "Summarize {dialogue} }"), ("no-dialogue", "Summarize this."),
        ("attribute", "{dialogue.__class__}"), ("positional", "{0} {dialogue}"), ("index", "{dialogue[0]}"),
        ("30k-chars", "{dialogue}" + "x" * 30_000), ("empty", "")]],
    # ---- devices -------------------------------------------------------------------------------------------
    *([("set", {"model.device": "cuda"}, "model.device", None, "device-cuda-without-cuda"),
       ("set", {"model.device": "cuda:7"}, "model.device", None, "device-cuda7-without-cuda")] if not _cuda() else []),
    ("set", {"model.device": "cuda:99"}, "model.device", None, "device-cuda99"),
    ("set", {"model.device": "tpu"}, "model.device", None, "device-tpu"),
    ("set", {"model.device": "mps"}, "model.device", None, "device-mps-on-linux"),
    # ---- credentials in URLs -------------------------------------------------------------------------------
    ("set", {"reward.backends[0]": {"kind": "openai_judge", "options": {
        "base_url": "http://admin:pw@127.0.0.1:9/v1", "model": "m"}}}, "reward.backends[0].options.base_url", None,
     "openai-url-credentials"),
    ("set", {"reward.backends[0]": {"kind": "bedrock_judge", "options": {
        "endpoint_url": "https://user:secret@bedrock.example"}}}, "reward.backends[0].options.endpoint_url", None,
     "bedrock-url-credentials"),
    ("set", {"reward.backends[0]": {"kind": "hf_classifier", "options": {"model": "x/y", "label": 0,
                                                                          "mirror": ["http://u:p@h/"]}}},
     "reward.backends[0].options.mirror", None, "nested-url-credentials"),
    # ---- data and models -----------------------------------------------------------------------------------
    ("set", {"data.source": "/no/such/file.csv"}, "data.source", None, "source-missing-file"),
    ("set", {"data.source": "hub"}, "data.source", OFFLINE, "source-hub-offline"),
    ("set", {"data.source": "hub:train"}, "data.source", OFFLINE, "source-hub-split-offline"),
    ("set", {"data.source": "hub:validation"}, "data.source", None, "source-hub-unknown-split"),
    ("set", {"data.source": ""}, "data.source", None, "source-empty"),
    ("set", {"model.name_or_path": "/no/such/model"}, "model.name_or_path", None, "model-missing-dir"),
    ("set", {"model.name_or_path": "gpt2"}, "model.name_or_path", OFFLINE, "model-hub-offline"),
    ("set", {"model.name_or_path": "builtin:nope"}, "model.name_or_path", None, "model-unknown-builtin"),
    ("set", {"model.name_or_path": __file__}, "model.name_or_path", None, "model-is-a-file"),
    ("set", {"model.name_or_path": "a\x00b"}, "model.name_or_path", None, "model-nul"),
    ("set", {"reward_model.base_model": "/no/such/model"}, "reward_model.base_model", None, "rm-base-missing"),
    ("set", {"output_dir": ""}, "output_dir", None, "output-empty"),
    ("set", {"output_dir": "runs\x00/x"}, "output_dir", None, "output-nul"),
    ("set", {"reward.backends[0]": {"kind": "hf_classifier"}}, "reward.backends[0].options.model", None,
     "hf-classifier-no-model"),
    ("set", {"reward.backends[0]": {"kind": "hf_classifier", "options": {"model": 5}}},
     "reward.backends[0].options.model", None, "hf-classifier-model-int"),
    ("source", "prompt\n" + "x" * 10_000_000 + "\n", "data.source", None, "csv-10MB-field"),
    ("source", "\x00\x01\x02 not a csv", "data.source", None, "csv-binary"),
    ("source", "question,answer\nwhat,that\n", "data.source", None, "csv-no-prompt-column"),
    # ---- what a browser may not do (engine.policy; the CLI may) --------------------------------------------
    ("browser", {"output_dir": "../../../../tmp/x"}, "output_dir", None, "browser-output-dotdot"),
    ("browser", {"output_dir": "/tmp/x"}, "output_dir", None, "browser-output-absolute"),
    ("browser", {"data.source": "/etc/passwd"}, "data.source", None, "browser-source-etc-passwd"),
    ("browser", {"data.source": "/etc/no-such-file"}, "data.source", None, "browser-source-missing-outside"),
    ("browser", {"model.name_or_path": "/etc"}, "model.name_or_path", None, "browser-model-etc"),
    ("browser", {"reward_model.base_model": "/usr"}, "reward_model.base_model", None, "browser-rm-base-usr"),
    ("browser", {"reward.backends[0]": {"kind": "hf_classifier", "options": {"model": "/"}}},
     "reward.backends[0].options.model", None, "browser-hf-model-root"),
    ("browser", {"reward.backends[0]": {"kind": "topic", "options": {"model": "/usr"}}},
     "reward.backends[0].options.model", None, "browser-topic-model-usr"),
    ("browser", {"evaluation.evaluator": {"kind": "jigsaw", "options": {"model_dir": "/tmp"}}},
     "evaluation.evaluator.options.model_dir", None, "browser-jigsaw-model-dir"),
    ("browser", {"reward.backends[0]": {"kind": "openai_judge", "options": {
        "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "AWS_SECRET_ACCESS_KEY"}}},
     "reward.backends[0].kind", None, "browser-openai-judge-exfiltration"),
    ("browser", {"reward.backends[0]": {"kind": "bedrock_judge", "options": {"endpoint_url": "http://127.0.0.1:9"}}},
     "reward.backends[0].kind", None, "browser-bedrock-endpoint"),
]


def _set(data: dict, dotted: str, value) -> None:
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
    node = data
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    if last.startswith("["):
        node[int(last[1:-1])] = value
    else:
        node[last] = value


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    db = tmp_path_factory.mktemp("bad_inputs") / "lab.db"
    lab = api.Lab.connect(str(db), start_worker=False)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A small valid config (built-in data and model, offline scorers); every case breaks one thing in it."""
    out = tmp_path_factory.mktemp("bad_inputs_out")
    cfg = RunConfig(name="base")
    cfg.model.name_or_path = "builtin:tiny-gpt2"
    cfg.model.device = "cpu"
    cfg.data.source = "builtin"
    cfg.data.validation_size = 0  # the 42 built-in prompts cannot spare a validation split
    cfg.data.holdout_size = 8
    cfg.evaluation.evaluator.kind = "profanity"
    cfg.output_dir = str(out)
    return cfg.to_dict()


@pytest.fixture(scope="module")
def policy(tmp_path_factory, base) -> BrowserPolicy:
    tmp = tmp_path_factory.mktemp("bad_inputs_policy")
    settings = tmp / "lab_settings.toml"
    settings.write_text(f'[paths]\noutputs = ["{base["output_dir"]}"]\n')
    return BrowserPolicy(load_settings(settings))


def test_the_base_config_is_accepted(base, policy):
    """The control: without the broken field, the base config passes every check, the browser's included."""
    assert api.validate_config(copy.deepcopy(base), check_data=True) == {}
    assert api.validate_config(copy.deepcopy(base), check_data=True, policy=policy) == {}


def test_there_are_at_least_100_cases():
    assert len(CASES) >= 100
    assert len({c[-1] for c in CASES}) == len(CASES)  # ids are unique


@pytest.mark.parametrize("kind, payload, field, env", [pytest.param(*c[:4], id=c[4]) for c in CASES])
def test_refused_before_registration_with_the_field_named(kind, payload, field, env, lab, base, policy,
                                                          tmp_path, monkeypatch):
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as exc:
        if kind == "yaml":
            lab.start_run(payload)
        elif kind == "bytes":
            lab.start_run(RunConfig.from_bytes(payload))
        else:
            cfg = copy.deepcopy(base)
            if kind == "source":
                path = tmp_path / "prompts.csv"
                path.write_bytes(payload.encode("utf-8", "surrogatepass"))
                payload = {"data.source": str(path)}
            for dotted, value in payload.items():
                _set(cfg, dotted, value)
            lab.start_run(cfg, policy=policy if kind == "browser" else None)
    errors = exc.value.errors
    fields = [e.field for e in errors]
    if field.endswith("*"):
        assert any(f.startswith(field[:-1]) for f in fields), fields
    else:
        assert field in fields, fields
    assert lab.list_runs() == []  # nothing registered
    for e in errors:
        assert "Traceback" not in e.message and 'File "' not in e.message, e
        assert len(e.message) <= 400 and len(e.field) <= 120, (len(e.field), len(e.message))


# ---- the CLI: field errors, never a traceback --------------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    pytest.param(b"\x7fELF\x02\x01\x01\x00\x00\x00", "<file>: is a binary file", id="cli-binary"),
    pytest.param(("x: " + "[" * 50_000 + "]" * 50_000).encode(), "nested deeper than", id="cli-deep-nesting"),
    pytest.param(b"ppo: [unclosed", "<yaml>: not a valid run config", id="cli-bad-yaml"),
    pytest.param(ALIAS_BOMB.encode(), "aliases", id="cli-alias-bomb"),
    pytest.param(b"", "<file>: is empty", id="cli-empty"),
    pytest.param(b"data: {source: hub}\n", "data.source: the Hugging Face hub is offline", id="cli-hub-offline"),
    pytest.param(b"reward: {backends: [{kind: profanity, options: [1]}]}\n", "reward.backends[0].options",
                 id="cli-options-list"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_prints_field_errors(command, content, expected, tmp_path, capsys, monkeypatch):
    from engine.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    code = main(["--db", str(tmp_path / "lab.db"), command, str(path)])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert len(err) < 2000
    if command == "run" and (tmp_path / "lab.db").exists():
        from engine.store import Store

        with Store(tmp_path / "lab.db") as store:
            assert store.list_runs() == []


@pytest.mark.parametrize("command", [["runs"], ["show", "x"], ["export", "x"]])
def test_cli_corrupt_store_is_an_error_line(command, tmp_path, capsys):
    from engine.__main__ import main

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(bytes(range(256)) * 20)
    assert main(["--db", str(corrupt), *command]) == 2
    err = capsys.readouterr().err
    assert "cannot be used" in err and "not a database" in err and "Traceback" not in err


def test_cli_prints_names_with_control_characters_escaped(tmp_path, capsys):
    from engine.__main__ import main
    from engine.store import Store

    db = tmp_path / "lab.db"
    with Store(db) as store:  # a name stored by an older version, or written to the store directly
        run_id = store.create_run(RunConfig().to_yaml(), name="ok\nforged-run  completed\u202eevil\x1b[2J")
    assert main(["--db", str(db), "runs"]) == 0
    out = capsys.readouterr().out
    assert "forged-run" in out and "\nforged-run" not in out and "\u202e" not in out and "\x1b" not in out
    assert "\\x0a" in out and "\\u202e" in out
    assert main(["--db", str(db), "show", run_id]) == 0
    out = capsys.readouterr().out
    assert "\nforged" not in out and "\x1b" not in out


def test_echoed_values_are_cut():
    huge = "v" * 1_000_000
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_dict({"ppo": {"batch_size": huge}})
    assert len(str(exc.value)) < 300


def test_policy_refusal_message_is_the_same_whether_or_not_the_file_exists(policy, base, tmp_path):
    outside = tmp_path / "prompts.txt"  # a file the data check would call "unsupported", were it looked at
    outside.write_text("not prompts")
    seen = set()
    for source in ("/etc/passwd", "/etc/no-such-file", str(outside), str(tmp_path / "missing.csv")):
        cfg = copy.deepcopy(base)
        cfg["data"]["source"] = source
        seen.add(tuple(api.validate_config(cfg, check_data=True, policy=policy)["data.source"]))
    assert len(seen) == 1


def test_prompt_plus_response_longer_than_the_models_positions(lab, base, tiny_gpt2_dir):
    cfg = copy.deepcopy(base)
    cfg["model"]["name_or_path"] = str(tiny_gpt2_dir)  # n_positions 512
    cfg["data"]["max_prompt_tokens"], cfg["generation"]["max_new_tokens"] = 500, 32
    with pytest.raises(ConfigError) as exc:
        lab.start_run(cfg)
    assert "generation.max_new_tokens" in [e.field for e in exc.value.errors]
    assert lab.list_runs() == []
    cfg["data"]["max_prompt_tokens"] = 480  # 480 + 32 = 512 fits
    assert api.validate_config(cfg) == {}


def test_cuda_is_accepted_where_it_exists():
    if not _cuda():
        pytest.skip("no CUDA here: the table refuses device cuda instead")
    cfg = RunConfig()
    cfg.model.device = "cuda"
    assert "model.device" not in api.validate_config(cfg)


def test_stored_yaml_has_no_aliases_and_reloads():
    from engine.config import RewardBackendSettings

    shared = {"transform": "p_not"}
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(options=shared), RewardBackendSettings(name="second", options=shared)]
    text = cfg.to_yaml()
    assert "*id" not in text and RunConfig.from_yaml(text).reward.backends[1].options == shared
