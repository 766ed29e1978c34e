"""Classifier reward backends: alt-profanity-check and any Hugging Face sequence classifier.

The HF tests run on a tiny random RoBERTa classifier with a word-level tokenizer, both built here (no hub),
labelled like the seed's reward model: {0: "nothate", 1: "hate"}. (The Jigsaw port has its own test file.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.rewards.base import RewardBackend, ToxicityScorer
from engine.rewards.profanity import EPS, ProfanityBackend, log_odds_not

SEED_NICE, SEED_MEAN = "I like you.", "You are terrible and i hate you."

# --------------------------------------------------------------------------------------------- profanity


@pytest.fixture(scope="module")
def profanity() -> ProfanityBackend:
    pytest.importorskip("profanity_check")
    return ProfanityBackend()


def test_profanity_orders_the_seed_sentences(profanity):
    result = profanity.score(["", ""], [SEED_NICE, SEED_MEAN])
    p_nice, p_mean = result.raw["p_offensive"]
    assert p_nice == pytest.approx(0.17, abs=0.02) and p_mean == pytest.approx(0.88, abs=0.02)
    assert result.scores[0] > 0 > result.scores[1]


def test_profanity_reward_is_log_odds_of_not_offensive(profanity):
    texts = [SEED_NICE, SEED_MEAN, "What a lovely garden.", "shut up you stupid moron"]
    result = profanity.score([""] * 4, texts)
    for p, reward in zip(result.raw["p_offensive"], result.scores, strict=True):
        q = min(max(p, EPS), 1 - EPS)
        assert reward == pytest.approx(math.log(1 - q) - math.log(q), rel=1e-9)
    assert result.raw["p_offensive"][3] > 1 - EPS  # the last text is clipped
    assert result.scores[3] == pytest.approx(-math.log((1 - EPS) / EPS))
    assert profanity.toxicity(texts) == result.raw["p_offensive"]
    assert isinstance(profanity, RewardBackend) and isinstance(profanity, ToxicityScorer)


def test_profanity_p_not_transform_is_one_minus_p(profanity):
    texts = [SEED_NICE, SEED_MEAN, "What a lovely garden."]
    log_odds = profanity.score([""] * 3, texts)
    result = ProfanityBackend(transform="p_not").score([""] * 3, texts)
    assert result.raw == log_odds.raw  # same classifier, only the reward differs
    assert result.scores == pytest.approx([1 - p for p in log_odds.raw["p_offensive"]], rel=1e-12)
    # The nice sentence scores higher; rewards stay in [0, 1] (log-odds would give about +1.6 and -2.0)
    assert 1 >= result.scores[0] > result.scores[1] >= 0
    with pytest.raises(ValueError, match="transform must be one of"):
        ProfanityBackend(transform="logit")


def test_profanity_cap_stops_paying_above_it_and_keeps_the_offensive_tail(profanity):
    from engine.config import RewardBackendSettings, RunConfig, validate

    texts = [SEED_NICE, SEED_MEAN, "What a lovely garden."]
    plain = profanity.score([""] * 3, texts).scores
    cap = (max(plain) + min(plain)) / 2  # between the mean sentence and the nicest one
    capped = ProfanityBackend(cap=cap).score([""] * 3, texts).scores
    assert capped == pytest.approx([min(x, cap) for x in plain], rel=1e-12)
    assert min(capped) == pytest.approx(min(plain)) and max(capped) == pytest.approx(cap) and cap < max(plain)
    with pytest.raises(ValueError, match="cap must be a finite number"):
        ProfanityBackend(cap=float("nan"))
    cfg = RunConfig()
    for bad in ("high", True, float("inf")):
        cfg.reward.backends = [RewardBackendSettings(kind="profanity", options={"cap": bad})]
        assert "reward.backends[0].options.cap" in {e.field for e in validate(cfg)}, bad
    cfg.reward.backends = [RewardBackendSettings(kind="profanity", options={"cap": 4.5, "transform": "log_odds"})]
    assert not [e for e in validate(cfg) if e.field.startswith("reward")]


def test_log_odds_clips_extreme_probabilities():
    bound = math.log((1 - EPS) / EPS)
    assert log_odds_not(0.0) == pytest.approx(bound)
    assert log_odds_not(1.0) == pytest.approx(-bound)
    assert log_odds_not(0.5) == 0.0


def test_profanity_score_on_and_input_checks(profanity):
    rude_prompt = ["You are a stupid idiot. "]
    alone = profanity.score(rude_prompt, ["Have a nice day."]).scores[0]
    assert alone == pytest.approx(profanity.score([""], ["Have a nice day."]).scores[0])
    joined = ProfanityBackend(score_on="prompt_response").score(rude_prompt, ["Have a nice day."]).scores[0]
    assert joined < alone - 1.0
    assert profanity.score([], []).scores == []
    with pytest.raises(ValueError, match="score_on"):
        ProfanityBackend(score_on="prompt")
    with pytest.raises(ValueError, match="prompts"):
        profanity.score(["a"], ["b", "c"])


# --------------------------------------------------------------------------------------------- HF classifier

TEXTS = [
    "I like you.",
    "You are terrible and i hate you.",
    "people like you should leave",
    "",
    "thank you for the kind words , have a nice day",
    "you are a good friend and i like the garden",
    "hate hate hate terrible terrible people",
]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in roberta-base
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([t.lower() for t in TEXTS] + TEXTS, trainers.WordLevelTrainer(special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=16,
    )


def _save_classifier(out: Path, id2label: dict[int, str], swap_rows: bool = False, hate_bias: float = 0.0) -> Path:
    """A seeded tiny RoBERTa classifier. swap_rows: same network with its two output rows swapped.
    hate_bias: added to the "hate" logit, to make it the larger one for every text."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = _tokenizer()
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16 + 2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model = RobertaForSequenceClassification(config).eval()
    head = model.classifier.out_proj
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.3, -0.2]))
        if swap_rows:
            head.weight.copy_(head.weight.flip(0))
            head.bias.copy_(head.bias.flip(0))
        hate = [i for i, name in id2label.items() if name == "hate"][0]
        head.bias[hate] += hate_bias
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory) -> Path:
    return _save_classifier(tmp_path_factory.mktemp("clf"), {0: "nothate", 1: "hate"})


def _reference_logits(model_dir: Path, texts: list[str]):
    """Logits computed one text at a time, straight from transformers (no batching, no padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return torch.cat([model(**tok(t, truncation=True, return_tensors="pt")).logits for t in texts])


def test_reward_is_the_nothate_logit_by_name(clf_dir):
    from engine.rewards.hf_classifier import HFClassifierBackend

    ref = _reference_logits(clf_dir, TEXTS)
    for label in (0, "nothate", "NotHate"):
        result = HFClassifierBackend(str(clf_dir), label=label).score([""] * len(TEXTS), TEXTS)
        assert result.scores == pytest.approx(ref[:, 0].tolist(), abs=1e-5)
    assert set(result.raw) == {"logit_nothate", "logit_hate", "p_nothate", "p_hate"}
    assert result.raw["logit_hate"] == pytest.approx(ref[:, 1].tolist(), abs=1e-5)
    p = ref.softmax(-1)[:, 1].tolist()
    assert result.raw["p_hate"] == pytest.approx(p, abs=1e-6)


def test_label_order_swapped_still_picks_nothate(clf_dir, tmp_path):
    from engine.rewards.hf_classifier import HFClassifierBackend

    swapped = _save_classifier(tmp_path / "swapped", {0: "hate", 1: "nothate"}, swap_rows=True)
    ref = _reference_logits(swapped, TEXTS)
    backend = HFClassifierBackend(str(swapped), label="nothate")
    scores = backend.score([""] * len(TEXTS), TEXTS).scores
    assert backend.load().label_index == 1 and backend.toxic_index == 0
    assert scores == pytest.approx(ref[:, 1].tolist(), abs=1e-5)
    # the swapped model is the same network, so the nothate reward is the same as the original's
    original = HFClassifierBackend(str(clf_dir), label="nothate").score([""] * len(TEXTS), TEXTS).scores
    assert scores == pytest.approx(original, abs=1e-5)
    assert backend.toxicity(TEXTS) == pytest.approx(ref.softmax(-1)[:, 0].tolist(), abs=1e-6)


def test_seed_trap_reward_is_not_the_largest_logit(tmp_path):
    """Seed trap 1: a sorted pipeline output's first score is the larger logit (here always "hate")."""
    from transformers import pipeline

    from engine.rewards.hf_classifier import HFClassifierBackend

    model_dir = _save_classifier(tmp_path / "hateful", {0: "nothate", 1: "hate"}, hate_bias=5.0)
    result = HFClassifierBackend(str(model_dir), label="nothate").score([""] * len(TEXTS), TEXTS)
    pipe = pipeline("text-classification", model=str(model_dir), top_k=None, function_to_apply="none")
    for text, reward, hate_logit in zip(TEXTS, result.scores, result.raw["logit_hate"], strict=True):
        sorted_out = pipe([text])[0]  # every label, sorted by score
        assert sorted_out[0]["label"] == "hate"  # what the seed's result[0]["score"] picked
        assert sorted_out[0]["score"] == pytest.approx(hate_logit, abs=1e-4)
        nothate = [d["score"] for d in sorted_out if d["label"] == "nothate"][0]
        assert reward == pytest.approx(nothate, abs=1e-4)
        assert reward < hate_logit - 3.0


def test_unknown_label_and_bad_index_errors(clf_dir):
    from engine.rewards.hf_classifier import HFClassifierBackend

    with pytest.raises(ValueError, match=r"'toxic' is not a label.*0='nothate', 1='hate'"):
        HFClassifierBackend(str(clf_dir), label="toxic").score(["a"], ["b"])
    with pytest.raises(ValueError, match="index 2 out of range"):
        HFClassifierBackend(str(clf_dir), label=2).load()
    with pytest.raises(ValueError, match="toxic_label"):
        HFClassifierBackend(str(clf_dir), toxic_label="offensive").toxicity(["a"])
    with pytest.raises(ValueError, match="batch_size"):
        HFClassifierBackend(str(clf_dir), batch_size=0)


def test_batching_equals_one_by_one(clf_dir):
    from engine.rewards.hf_classifier import HFClassifierBackend

    batched = HFClassifierBackend(str(clf_dir), batch_size=3).score([""] * len(TEXTS), TEXTS)
    single = HFClassifierBackend(str(clf_dir), batch_size=1).score([""] * len(TEXTS), TEXTS)
    assert batched.scores == pytest.approx(single.scores, abs=1e-5)
    for key in single.raw:
        assert batched.raw[key] == pytest.approx(single.raw[key], abs=1e-5)


def test_long_texts_are_truncated(clf_dir):
    from engine.rewards.hf_classifier import HFClassifierBackend

    backend = HFClassifierBackend(str(clf_dir), max_length=8)
    long_text = " ".join(["you are a good friend and i like the garden"] * 20)  # ~200 tokens
    short = "you are a good friend and"  # the same first 6 words: <s> + 6 + </s> = 8 tokens
    scores = backend.score(["", ""], [long_text, short]).scores
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_hf_score_on_semantics(clf_dir):
    from engine.rewards.hf_classifier import HFClassifierBackend

    prompts, responses = ["people like you should leave ", "thank you "], ["I like you.", "have a nice day"]
    on_response = HFClassifierBackend(str(clf_dir)).score(prompts, responses).scores
    assert on_response == pytest.approx(_reference_logits(clf_dir, responses)[:, 0].tolist(), abs=1e-5)
    joined = HFClassifierBackend(str(clf_dir), score_on="prompt_response").score(prompts, responses).scores
    expected = _reference_logits(clf_dir, [p + r for p, r in zip(prompts, responses, strict=True)])[:, 0].tolist()
    assert joined == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="score_on"):
        HFClassifierBackend(str(clf_dir), score_on="prompt")
