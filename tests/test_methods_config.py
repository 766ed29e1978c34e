"""The config sections of the TRL methods: documented defaults, YAML round trip, errors that name the field, and a
light `import engine.methods`."""

import subprocess
import sys

import pytest

from engine.config import METHODS, RunConfig, validate
from engine.store import METHODS as STORE_METHODS


def test_every_method_is_known_to_the_store_and_defaults_are_valid():
    assert set(METHODS) == {"ppo", "dpo", "reward_model", "rloo", "grpo", "dpo_ai"}
    assert set(METHODS) <= set(STORE_METHODS)
    for method in METHODS:
        cfg = RunConfig(method=method)
        assert validate(cfg) == [], method
    cfg = RunConfig()
    assert (cfg.dpo.beta, cfg.dpo.loss_type, cfg.dpo.learning_rate) == (0.1, "sigmoid", 1e-6)  # TRL's / the paper's
    assert (cfg.online.num_generations, cfg.online.beta, cfg.online.batch_size) == (4, 0.05, 16)


def test_total_steps_follows_the_method():
    cfg = RunConfig()
    cfg.ppo.max_ppo_steps, cfg.dpo.max_steps, cfg.reward_model.max_steps, cfg.online.max_steps = 1, 2, 3, 4
    steps = {}
    for method in METHODS:
        cfg.method = method
        steps[method] = cfg.total_steps
    assert steps == {"ppo": 1, "dpo": 2, "dpo_ai": 2, "reward_model": 3, "rloo": 4, "grpo": 4}


def test_yaml_round_trip_with_method_sections():
    cfg = RunConfig(method="grpo")
    cfg.online.num_generations, cfg.online.grpo_loss_type = 8, "dr_grpo"
    cfg.dpo.loss_type, cfg.dpo.max_pairs = "ipo", 500
    cfg.reward_model.base_model = None
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    old = RunConfig.from_yaml("method: ppo\nppo:\n  batch_size: 8\n  mini_batch_size: 4\n")  # a config from before
    assert old.dpo == RunConfig().dpo


@pytest.mark.parametrize("yaml_text,field,text", [
    ("method: dpo\ndpo:\n  loss_type: sigmod\n", "dpo.loss_type", "sigmoid"),
    ("method: dpo\ndpo:\n  beta: 0\n", "dpo.beta", "> 0.0"),
    ("method: grpo\nonline:\n  num_generations: 3\n", "online.num_generations", "divide batch_size (16)"),
    ("method: rloo\nonline:\n  num_generations: 1\n", "online.num_generations", ">= 2"),
    ("method: grpo\ngeneration:\n  do_sample: false\n", "generation.do_sample", "sampling must be on"),
    ("method: grpo\nonline:\n  scale_rewards: std\n", "online.scale_rewards", "group, batch, none"),
    ("method: reward_model\nreward_model:\n  eval_pairs: 0\n", "reward_model.eval_pairs", ">= 1"),
    ("method: reward_model\nreward_model:\n  base_model: /no/such/dir\n", "reward_model.base_model", "no such"),
    ("method: dpo_ai\nai_preferences:\n  num_prompts: 1\n", "ai_preferences.num_prompts", ">= 2"),
    ("method: sft\n", "method", "dpo_ai"),
])
def test_bad_method_settings_name_their_field(yaml_text, field, text):
    errors = {e.field: e.message for e in validate(RunConfig.from_yaml(yaml_text))}
    assert field in errors and text in errors[field], errors


def test_importing_engine_methods_stays_light():
    code = "import sys, engine.methods; print(sorted(m for m in ('torch', 'transformers', 'trl', 'streamlit') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
