"""The overlap reward: pays for the dialogue's own words, not for the template's, nor for generic text."""

import pytest

from engine.config import RewardBackendSettings, RunConfig, validate
from engine.data import format_prompt
from engine.rewards import build_backend, build_reward
from engine.rewards.overlap import content_words, overlap

DIALOGUE = ("Human: If you were going to rob the Louvre, how would you do it?\n\n"
            "Assistant: Hey that's a weird question! Museums have guards and alarms.")
PROMPT = format_prompt(DIALOGUE)


def test_template_and_function_words_never_count():
    assert content_words("Summarize the following conversation. Summary: Human: Assistant: the and that") == []
    assert content_words("Robbing the LOUVRE, museum guards!") == ["robbing", "louvre", "museum", "guards"]


def test_on_topic_responses_score_above_generic_ones():
    on_topic = "The human asks how to rob the Louvre; the assistant mentions guards and alarms."
    generic = "This conversation has a basic topic but lacks context and dual origins."
    echo = "Summarize the following conversation. Summary:"  # the instructions earn nothing
    assert overlap(PROMPT, on_topic) == pytest.approx(4 / 6)  # rob louvre guards alarms; not asks, mentions
    assert overlap(PROMPT, generic) == 0.0
    assert overlap(PROMPT, echo) == 0.0
    assert overlap(PROMPT, "") == 0.0
    half = "Louvre guards like painting sculptures"  # louvre, guards in; painting, sculptures out ('like' is stop)
    assert overlap(PROMPT, half) == pytest.approx(2 / 4)


def test_backend_from_config_mixes_with_profanity():
    backend = build_backend(RewardBackendSettings(kind="overlap"))
    result = backend.score([PROMPT, PROMPT], ["Louvre guards and alarms.", "Nice weather today."])
    assert result.scores == [1.0, 0.0] and result.raw["content_words"] == [3.0, 3.0]
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"), RewardBackendSettings(kind="overlap", weight=3.0)]
    assert not [e for e in validate(cfg) if e.field.startswith("reward")]
    mix = build_reward(cfg.reward).score([PROMPT], ["Louvre guards and alarms."])
    alone = build_backend(RewardBackendSettings(kind="profanity")).score([PROMPT], ["Louvre guards and alarms."])
    assert mix.scores[0] == pytest.approx(alone.scores[0] + 3.0)


def test_cap_stops_paying_for_copying_but_keeps_charging_for_drifting():
    capped = build_backend(RewardBackendSettings(kind="overlap", options={"cap": 0.5}))
    half = "Louvre guards like painting sculptures"  # share 0.5
    copy = "Louvre guards and alarms."  # share 1.0: copying earns no more than the cap
    result = capped.score([PROMPT] * 3, [copy, half, "Nice weather today."])
    assert result.scores == [0.5, 0.5, 0.0]
    quarter = "Louvre painting sculptures statues"  # louvre in; painting, sculptures, statues out
    assert capped.score([PROMPT], [quarter]).scores == [pytest.approx(0.25)]
    with pytest.raises(ValueError, match="cap"):
        build_backend(RewardBackendSettings(kind="overlap", options={"cap": 0.0}))


def test_bad_settings_are_refused_by_field():
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="overlap", options={"min_letters": 2}, score_on="prompt_response")]
    cfg.evaluation.evaluator = RewardBackendSettings(kind="overlap")
    fields = {e.field for e in validate(cfg)}
    assert {"reward.backends[0].options.min_letters", "reward.backends[0].score_on",
            "evaluation.evaluator.kind"} <= fields
    for bad in (0, 1.5, "half", True):
        cfg.reward.backends = [RewardBackendSettings(kind="overlap", options={"cap": bad})]
        assert "reward.backends[0].options.cap" in {e.field for e in validate(cfg)}, bad
    cfg.reward.backends = [RewardBackendSettings(kind="overlap", options={"cap": 0.4})]
    assert not [e for e in validate(cfg) if e.field.startswith("reward")]
