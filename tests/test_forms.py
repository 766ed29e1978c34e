"""app/forms.py (config ⇄ widget state) and app/tables.py (before/after filters): pure functions."""

from __future__ import annotations

import pandas as pd
import pytest

from app import forms, tables
from engine.config import LoraSettings, RewardBackendSettings, RunConfig


def test_default_config_round_trips_through_the_form_state():
    cfg = RunConfig()
    back, errors = forms.state_to_config(forms.config_to_state(cfg))
    assert errors == [] and back == cfg


def test_a_custom_config_round_trips_with_every_section():
    cfg = RunConfig(name="custom", output_dir="/data/checkpoints")
    cfg.model.name_or_path = "google/flan-t5-base"
    cfg.model.architecture = "seq2seq"
    cfg.model.lora = LoraSettings(enabled=True, r=8, alpha=16, target_modules=["q", "v"])
    cfg.ppo.learning_rate, cfg.ppo.adaptive_kl = 3e-4, False
    cfg.generation.top_k = 50
    cfg.data.source, cfg.data.train_size = "/data/prompts.csv", 100
    cfg.reward.normalize = "zscore"
    cfg.reward.backends = [
        RewardBackendSettings(kind="hf_classifier", weight=2.0, name="roberta",
                              options={"model": "facebook/roberta-hate-speech-dynabench-r4-target",
                                       "label": "nothate", "batch_size": 8}),
        RewardBackendSettings(kind="jigsaw", weight=0.5, score_on="prompt_response", options={"label": "insult"}),
    ]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="profanity")
    state = forms.config_to_state(cfg, rows=[7, 9])
    assert state[forms.key_of("model.choice")] == forms.CUSTOM_MODEL
    assert state["rw-7-model"] == "facebook/roberta-hate-speech-dynabench-r4-target"
    assert state["rw-7-label"] == "nothate" and state["rw-7-options"] == "batch_size: 8"
    assert state[forms.key_of("data.source_choice")] == "file"
    back, errors = forms.state_to_config(state)
    assert errors == [] and back == cfg


def test_every_config_section_has_widgets_and_other_methods_round_trip():
    import dataclasses
    from typing import get_type_hints

    drawn = {prefix for prefix, _, _ in forms.SECTIONS.values()}
    sections = {name for name, tp in get_type_hints(RunConfig).items() if dataclasses.is_dataclass(tp)}
    assert {"model", "ppo", "generation", "data", "evaluation"} <= sections
    assert sections - {"reward"} <= drawn  # a new section of the config gets a form without a change here
    cfg = RunConfig(name="dpo-run", method="dpo")
    cfg.dpo.beta, cfg.dpo.loss_type = 0.3, "ipo"
    cfg.reward_model.base_model = "/models/rm"
    back, errors = forms.state_to_config(forms.config_to_state(cfg))
    assert errors == [] and back == cfg
    state = forms.config_to_state(RunConfig())
    assert state[forms.key_of("reward_model.base_model")] == ""  # None shows as an empty box ...
    assert forms.state_to_config(state)[0].reward_model.base_model is None  # ... and comes back as None


def test_widget_help_comes_from_the_config_comments():
    from engine.config import PPOSettings

    helps = forms.field_help(PPOSettings)
    assert "must divide batch_size" in helps["mini_batch_size"]
    assert set(helps) <= {f for f in PPOSettings.__dataclass_fields__}


def test_bad_options_text_is_reported_on_its_field():
    state = forms.config_to_state(RunConfig(), rows=list(range(1, len(RunConfig().reward.backends) + 1)))
    state["rw-1-options"] = "- just\n- a list"
    cfg, errors = forms.state_to_config(state)
    assert cfg is None and [e.field for e in errors] == ["reward.backends[0].options"]
    state["rw-1-options"] = "label: [unclosed"
    assert "not valid YAML" in forms.state_to_config(state)[1][0].message
    state["rw-1-options"] = ""
    state[forms.key_of("ppo.batch_size")] = "sixteen"  # a wrong type surfaces as the config's own error
    cfg, errors = forms.state_to_config(state)
    assert cfg is None and errors[0].field == "ppo.batch_size"


def test_placed_fields_cover_what_validate_reports_for_a_bad_default_form():
    cfg = RunConfig()
    cfg.ppo.mini_batch_size = 5
    cfg.reward.backends[0].weight = -1
    from engine.api import validate_config

    errors = validate_config(cfg)
    state = forms.config_to_state(cfg)
    assert set(errors) == {"ppo.mini_batch_size", "reward.backends[0].weight", "reward.backends"}
    assert forms.unplaced_errors(errors, forms.placed_fields(state)) == {}
    assert "output_dir" in forms.placed_fields(state)  # every config field has a widget ...
    assert forms.unplaced_errors({"<yaml>": ["not valid YAML"]}, forms.placed_fields(state)) == {
        "<yaml>": ["not valid YAML"]}  # ... so only pseudo-fields are listed apart


@pytest.fixture
def table():
    return pd.DataFrame({"idx": [0, 1, 2, 3], "prompt": ["Hello", "bread", "x", "y"],
                         "response_before": ["you idiot", "ok", "fine", "meh"],
                         "toxicity_before": [0.9, 0.2, 0.5, 0.1],
                         "response_after": ["thanks", "Idiot!", "fine", "meh"],
                         "toxicity_after": [0.1, 0.6, 0.5, 0.3], "change": [-0.8, 0.4, 0.0, 0.2]})


def test_filters_of_the_before_after_table(table):
    assert list(tables.filter_before_after(table)["idx"]) == [0, 1, 2, 3]
    assert list(tables.filter_before_after(table, "biggest improvements")["idx"]) == [0]
    assert list(tables.filter_before_after(table, "regressions")["idx"]) == [1, 3]
    assert list(tables.filter_before_after(table, "all", "IDIOT")["idx"]) == [0, 1]
    assert list(tables.filter_before_after(table, "regressions", "idiot")["idx"]) == [1]
    assert list(tables.filter_before_after(table, "all", "(")["idx"]) == []  # plain text, not a regex
    with pytest.raises(ValueError, match="view must be one of"):
        tables.filter_before_after(table, "best")
    assert tables.fmt(float("nan")) == "—" and tables.fmt(0.5, ".1%") == "50.0%"


def test_holdout_count_names_prompts_and_responses_per_prompt():
    assert tables.holdout_count(200) == "200 hold-out prompts"
    assert tables.holdout_count(800, 4) == "800 hold-out responses (200 prompts × 4)"
    assert tables.holdout_count(None) == "— hold-out prompts"
