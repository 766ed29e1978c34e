"""The run config: the measured defaults (= configs/default.yaml), presets, YAML round trip, and validation errors
that name the field."""

import subprocess
import sys

import pytest

from engine.config import ConfigError, RewardBackendSettings, RunConfig, validate


def test_defaults_are_the_measured_default_run():
    cfg = RunConfig()
    p, g = cfg.ppo, cfg.generation
    assert (p.learning_rate, p.batch_size, p.mini_batch_size, p.num_generations, p.max_ppo_steps) == (5e-5, 32, 8, 4, 28)
    assert (p.init_kl_coef, p.adaptive_kl, p.kl_horizon) == (0.2, False, 32)
    assert (p.gamma, p.lam, p.cliprange, p.cliprange_value, p.vf_coef, p.whiten_rewards) == (1.0, 0.95, 0.2, 0.2, 0.1,
                                                                                             False)
    assert (g.min_length, g.max_new_tokens, g.top_k, g.top_p, g.do_sample) == (5, 24, 0, 1.0, True)
    assert (cfg.model.name_or_path, cfg.model.mixed_precision) == ("builtin:smollm2", "bf16")
    assert (cfg.data.max_prompt_tokens, cfg.evaluation.batch_size, cfg.evaluation.samples_per_prompt) == (96, 64, 4)
    assert cfg.data.template.startswith("Summarize the following conversation.\n\n")
    assert cfg.data.holdout_size >= 200
    assert cfg.reward.backends[0].kind != cfg.evaluation.evaluator.kind  # reward != evaluator offline
    assert validate(cfg) == []


def test_the_shipped_default_yaml_is_runconfig_defaults():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
    assert RunConfig.load(path) == RunConfig()
    # and it writes every field out (loading fills a missing one silently, so equality alone would not show it)
    body = "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("#"))
    assert body == RunConfig().to_yaml()


def test_presets():
    from engine.presets import PRESETS, preset

    assert preset("default") == RunConfig()
    seed = preset("seed-article")
    p = seed.ppo
    assert (p.learning_rate, p.ppo_epochs, p.batch_size, p.mini_batch_size, p.max_ppo_steps) == (1.41e-5, 1, 16, 4, 10)
    assert (p.num_generations, p.init_kl_coef, p.adaptive_kl, p.kl_target, p.kl_horizon) == (1, 0.2, True, 6.0, 10000)
    assert (seed.model.mixed_precision, seed.evaluation.samples_per_prompt) == ("none", 1)
    tour = preset("tour")
    assert tour.model.name_or_path == "builtin:tiny-gpt2" and tour.data.holdout_size < 200
    for name in PRESETS:
        assert validate(preset(name)) == [], name
    preset("tour").ppo.max_ppo_steps = 1
    assert preset("tour").ppo.max_ppo_steps == 8  # each call builds a fresh config
    with pytest.raises(ValueError, match="seed-article"):
        preset("nope")


def test_cli_init_writes_a_preset(tmp_path, capsys):
    from engine.__main__ import main
    from engine.presets import preset

    assert main(["init", str(tmp_path / "c.yaml"), "--preset", "seed-article"]) == 0
    assert RunConfig.load(tmp_path / "c.yaml") == preset("seed-article")
    assert main(["init", str(tmp_path / "d.yaml")]) == 0
    assert RunConfig.load(tmp_path / "d.yaml") == RunConfig()


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = RunConfig(name="x")
    cfg.ppo.learning_rate = 3e-5
    cfg.reward.backends.append(RewardBackendSettings(kind="hf_classifier", weight=0.5, name="roberta",
                                                     options={"model": "facebook/roberta-hate-speech-dynabench-r4-target",
                                                              "label": "nothate"}))
    cfg.model.lora.enabled = True
    cfg.model.lora.target_modules = ["q_proj", "v_proj"]
    path = cfg.save(tmp_path / "run.yaml")
    again = RunConfig.load(path)
    assert again == cfg
    assert again.to_yaml() == cfg.to_yaml()


def test_yaml_accepts_scientific_notation_strings():
    cfg = RunConfig.from_yaml("ppo:\n  learning_rate: 1e-5\n")  # YAML 1.1 reads this as a string
    assert cfg.ppo.learning_rate == 1e-5


def test_unknown_field_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_yaml("ppo:\n  lerning_rate: 0.1\n")
    assert exc.value.errors[0].field == "ppo.lerning_rate"
    assert "learning_rate" in exc.value.errors[0].message


def test_wrong_type_is_named():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_yaml("ppo:\n  batch_size: sixteen\n")
    assert exc.value.errors[0].field == "ppo.batch_size"


@pytest.mark.parametrize("field,value,expect_field,expect_text", [
    ("ppo.mini_batch_size", 5, "ppo.mini_batch_size", "divide batch_size (32)"),
    ("ppo.mini_batch_size", 64, "ppo.mini_batch_size", "<= batch_size"),
    ("ppo.learning_rate", -1e-5, "ppo.learning_rate", "> 0.0"),
    ("ppo.lam", 1.5, "ppo.lam", "<= 1.0"),
    ("generation.top_p", 0.0, "generation.top_p", "> 0.0"),
    ("generation.min_length", 400, "generation.min_length", "max_new_tokens"),
    ("model.name_or_path", "./no/such/model", "model.name_or_path", "no such model directory"),
    ("model.name_or_path", "builtin:nope", "model.name_or_path", "unknown built-in model"),
    ("model.device", "tpu", "model.device", "cuda"),
    ("data.source", "/nonexistent/prompts.csv", "data.source", "no such file"),
    ("data.template", "no placeholder", "data.template", "{dialogue}"),
    ("reward.normalize", "softmax", "reward.normalize", "zscore"),
    ("model.mixed_precision", "fp8", "model.mixed_precision", "bf16"),
    ("ppo.num_generations", 3, "ppo.num_generations", "must divide batch_size (32)"),
    ("ppo.num_generations", 0, "ppo.num_generations", ">= 1"),
])
def test_validation_names_field_and_range(field, value, expect_field, expect_text):
    data = RunConfig().to_dict()
    section, key = field.split(".")
    data[section][key] = value
    errors = validate(RunConfig.from_dict(data))
    assert any(e.field == expect_field and expect_text in e.message for e in errors), errors


def test_reward_backend_errors():
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="hf_classifier"), RewardBackendSettings(kind="bogus"),
                           RewardBackendSettings(kind="profanity", weight=-1)]
    fields = {e.field for e in validate(cfg)}
    assert {"reward.backends[0].options.model", "reward.backends[1].kind", "reward.backends[2].weight"} <= fields
    cfg.reward.backends = []
    assert any(e.field == "reward.backends" for e in validate(cfg))


def test_profanity_options_are_checked():
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="profanity", options={"transform": "sigmoid", "scale": 2})]
    errors = {e.field: e.message for e in validate(cfg)}
    assert "log_odds, p_not" in errors["reward.backends[0].options.transform"]
    assert "only options.transform" in errors["reward.backends[0].options.scale"]
    cfg.reward.backends = [RewardBackendSettings(kind="profanity", options={"transform": "p_not"})]
    assert validate(cfg) == []


def test_credentials_are_refused_in_config():
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="bedrock_judge", options={"aws_secret_access_key": "x"})]
    assert any("credentials" in e.message for e in validate(cfg))


def test_duplicate_backend_names_refused():
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="profanity")]
    assert any("used twice" in e.message for e in validate(cfg))


def test_check_raises_with_every_error():
    cfg = RunConfig()
    cfg.ppo.batch_size = 12
    cfg.ppo.mini_batch_size = 8
    cfg.generation.temperature = 0
    with pytest.raises(ConfigError) as exc:
        cfg.check()
    assert {e.field for e in exc.value.errors} == {"ppo.mini_batch_size", "generation.temperature"}
    assert exc.value.for_field("generation.temperature")


def test_engine_import_is_light_and_streamlit_free():
    code = ("import sys, engine, engine.config, engine.store, engine.data, engine.rewards; "
            "bad = [m for m in ('streamlit', 'torch', 'transformers', 'boto3') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_shipped_default_config_is_valid_and_round_trips():
    """configs/default.yaml (scripts/demo.sh) loads, validates, and is the same config after a YAML round trip."""
    from pathlib import Path

    cfg = RunConfig.load(Path(__file__).resolve().parent.parent / "configs" / "default.yaml").check()
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
