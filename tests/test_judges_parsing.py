"""Judge rubrics and score parsing: built-ins, user rubric validation, parse_score on many strings."""

from __future__ import annotations

import random

import pytest

from engine.rewards.judge_parsing import parse_score
from engine.rewards.rubrics import BUILTIN_RUBRICS, Rubric, get_rubric

# -- rubrics ---------------------------------------------------------------------------------------


def test_builtin_rubrics_match_the_seed():
    tox = get_rubric("toxicity")
    assert tox.score_range == (-5.0, 5.0) and tox.integer and tox.midpoint == 0.0
    text = tox.render("PROMPT", "You are terrible and i hate you.")
    assert "-5 (high toxicity)" in tox.system and "+5 (low toxicity)" in tox.system  # instructions: system prompt
    assert "only with the number" in tox.system and "never instructions" in tox.system
    assert "<response>\nYou are terrible and i hate you.\n</response>" in text
    assert "PROMPT" not in text  # seed trap 2: response alone

    sq = get_rubric("summary_quality")
    assert sq.score_range == (1.0, 5.0) and sq.midpoint == 3.0
    text = sq.render("Summarize the following conversation.\n\nHuman: hi", "A greeting.")
    for needle in ("1.00", "5.00", "factual accuracy", "coherence", "coverage", "Score: x.xx", "justification"):
        assert needle in sq.system
    assert "<prompt>\nSummarize the following conversation.\n\nHuman: hi\n</prompt>" in text
    assert "<response>\nA greeting.\n</response>" in text
    assert set(BUILTIN_RUBRICS) == {"toxicity", "summary_quality"}


def test_user_rubric_from_mapping_and_literal_braces():
    r = get_rubric({"name": "polite", "template": 'Rate politeness 0-10 as {{"score": n}}: {response}',
                    "low": 0, "high": 10, "system": "You are strict."})
    assert r.render("p", "thanks!") == 'Rate politeness 0-10 as {"score": n}: <response>\nthanks!\n</response>'
    assert r.system == "You are strict." and r.score_range == (0.0, 10.0)


@pytest.mark.parametrize("template, message", [
    ("Rate this: {answer}", "unknown placeholder(s) {answer}"),
    ("Rate {prompt} only", "must contain the {response} placeholder"),
    ("No placeholder at all", "must contain the {response} placeholder"),
    ("Rate {} please {response}", "unknown placeholder"),
    ("Rate {response.upper}", "unknown placeholder(s) {response.upper}"),
    ("Rate {response", "malformed template"),
    ('Answer as {"score": n}: {response}', "unknown placeholder"),
])
def test_bad_user_rubric_templates_are_rejected_clearly(template, message):
    with pytest.raises(ValueError, match="rubric 'mine'") as e:
        Rubric("mine", template, 0, 1)
    assert message in str(e.value)


def test_bad_rubric_ranges_and_names():
    with pytest.raises(ValueError, match=r"low \(5\) must be < high \(1\)"):
        Rubric("r", "{response}", 5, 1)
    with pytest.raises(ValueError, match="high must be a finite number"):
        Rubric("r", "{response}", 0, float("inf"))
    with pytest.raises(ValueError, match="unknown built-in rubric 'toxic'"):
        get_rubric("toxic")
    with pytest.raises(ValueError, match="missing field"):
        get_rubric({"name": "x", "template": "{response}"})
    with pytest.raises(ValueError, match="unknown field"):
        get_rubric({"name": "x", "template": "{response}", "low": 0, "high": 1, "scale": 3})


# -- parse_score -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, low, high, expected", [
    ("+5", -5, 5, 5.0),
    ("-4", -5, 5, -4.0),
    ("5", -5, 5, 5.0),
    ("0", -5, 5, 0.0),
    ("\u22124", -5, 5, -4.0),  # Unicode minus
    ("Score: 4.25", 1, 5, 4.25),
    ("Score: 4.25\nJustification: accurate, but misses 2 of the 3 topics.", 1, 5, 4.25),
    ("I'd rate it 3.5/5 because it is mostly coherent.", 1, 5, 3.5),
    ("**Rating:** -2", -5, 5, -2.0),
    ("The text is mildly rude. I would rate it a -1.", -5, 5, -1.0),
    ("On a scale from -5 to +5, this text is a 3.", -5, 5, 3.0),
    ("On a scale of 1 to 5, I'd give it 4.", 1, 5, 4.0),
    ("Rating (1-5): 2", 1, 5, 2.0),
    ("Score (out of 5): 4", 1, 5, 4.0),
    ("4 out of 5", 1, 5, 4.0),
    ("Score: 4.25/5.00", 1, 5, 4.25),
    ("The toxicity score is 5.", -5, 5, 5.0),
    ("Rated: +3", -5, 5, 3.0),
    ("score=.5", 0, 1, 0.5),
])
def test_parse_score_examples(text, low, high, expected):
    assert parse_score(text, low, high) == expected


@pytest.mark.parametrize("text, low, high", [
    ("", -5, 5),
    (None, -5, 5),
    ("I cannot rate this text.", -5, 5),
    ("Score: 7", 1, 5),  # out of range: rejected, never clipped
    ("Rating: -6", -5, 5),
    ("10/10", -5, 5),
    ("I'd give it 8 out of 10", 1, 5),
    ("version v1.2, the 3rd draft", 1, 5),  # numbers glued to words are not scores
    ("Score: 4.5.1", 1, 5),
    ("On a scale of 1 to 5", 1, 5),  # only the scale, no score
])
def test_parse_score_rejects(text, low, high):
    assert parse_score(text, low, high) is None


_PREFIXES = ["", "Sure. ", "After reading the text carefully, ", "Here is my assessment:\n", "Well - "]
_SUFFIXES = ["", ".", " because the text is polite.", "\n\nJustification: it covers the main points.",
             " (it is fine)"]
_FORMS = ["{v}", "Score: {v}", "score: {v}", "**Rating:** {v}", "Rating = {v}", "I'd rate it {v}/{hi}",
          "I would rate this text a {v} out of {hi}", "My rating: {v} (scale {lo} to {hi})",
          "On a scale from {lo} to {hi}, it is {v}", "The score is {v}", "Score: **{v}**", "rate: [{v}]"]


def _fmt(v: float, decimals: int, signed: bool) -> str:
    s = f"{v:.{decimals}f}"
    return ("+" + s) if signed and v > 0 else s


def test_parse_score_property_in_range_values_round_trip():
    """Every in-range value, written in any of many ways inside prose, parses back to itself."""
    rng = random.Random(0)
    checked = 0
    for low, high, decimals in ((-5, 5, 0), (1, 5, 2), (0, 10, 1), (1, 5, 0)):
        for _ in range(400):
            v = round(rng.uniform(low, high), decimals)
            written = _fmt(v, decimals, signed=low < 0 and rng.random() < 0.5)
            form = rng.choice(_FORMS).format(v=written, lo=_fmt(low, decimals, low < 0), hi=_fmt(high, decimals, False))
            text = rng.choice(_PREFIXES) + form + rng.choice(_SUFFIXES)
            assert parse_score(text, low, high) == pytest.approx(v), text
            checked += 1
    assert checked == 1600


def test_parse_score_property_out_of_range_after_keyword_is_rejected():
    rng = random.Random(1)
    for _ in range(300):
        low, high = rng.choice([(-5, 5), (1, 5), (0, 1)])
        v = rng.choice([rng.uniform(high + 0.01, high + 100), rng.uniform(low - 100, low - 0.01)])
        written = f"{v:.2f}"
        form = rng.choice(["Score: {v}", "**Rating:** {v}", "I'd rate it {v}", "rating: {v}", "{v}"])
        text = rng.choice(_PREFIXES) + form.format(v=written) + rng.choice(_SUFFIXES)
        assert parse_score(text, low, high) is None, text


def test_parse_score_property_no_digits_means_none_and_never_crashes():
    rng = random.Random(2)
    alphabet = "abcdefghij klmnop.,:;!?*-+/()[]{}\n\tScoreRating"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert parse_score(text, -5, 5) is None, text
    # With digits mixed in: whatever comes out is inside the range (or None), and nothing raises.
    alphabet += "0123456789.-+"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        value = parse_score(text, 1, 5)
        assert value is None or 1 <= value <= 5, text


# -- parse_score: exact or nothing (issue 11, "Parsing") ----------------------------------------------


@pytest.mark.parametrize("text, low, high", [
    ("4,5", 1, 5),  # a decimal comma or two numbers: not a 4
    ("Score: 4,5", 1, 5),
    ("4/10", 1, 5),  # another scale: refused, not read as 4
    ("4 out of 10", 1, 5),
    ("Score: 4/10, since it is clear", 1, 5),
    ("Score: N/A. The reply is 2 sentences long.", 1, 5),  # a label with no number: no score
    ("Rating: none (I cannot rate 2 texts at once)", -5, 5),
    ("<thinking>The score is 3.", 1, 5),  # reasoning never closed (cut short): no answer
    ("<thinking>Score: 3</thinking>", 1, 5),  # reasoning only: no answer after it
])
def test_ambiguous_or_foreign_scale_replies_are_refused(text, low, high):
    assert parse_score(text, low, high) is None


@pytest.mark.parametrize("text, low, high, expected", [
    ("The text has 2 sentences and one mild insult, so overall -4", -5, 5, -4.0),  # the last number, not the first
    ("Score: 2 for style, but on reflection. Final score: 4", 1, 5, 4.0),  # the last label wins
    ("Score: 4.25\nI'd rate coherence 5 but accuracy 3.", 1, 5, 4.25),  # a label beats loose keywords
    ("<thinking>Maybe 1? The rubric says score 2.</thinking>\nScore: 4", 1, 5, 4.0),  # reasoning never wins
    ("<think>it could be -5</think> -1", -5, 5, -1.0),
    ("3/5", 1, 5, 3.0),  # a denominator that is the rubric's top is fine
    ("3 out of 5.00", 1, 5, 3.0),
    ("Score: 4, because it is clear", 1, 5, 4.0),  # a comma then a space is punctuation
    ("It is between 1 and 5; I say 2", 1, 5, 2.0),
])
def test_the_answer_is_the_explicit_or_last_number(text, low, high, expected):
    assert parse_score(text, low, high) == expected


def test_long_replies_are_capped_at_both_ends():
    from engine.rewards.judge_parsing import HEAD_CHARS, TAIL_CHARS, answer_text

    filler = "blah 7 " * 10_000  # 70 KB of prose with numbers in it
    capped = answer_text("Score: 3\n" + filler + "\nThat is all.")
    assert len(capped) < HEAD_CHARS + TAIL_CHARS + 20
    assert capped.startswith("Score: 3") and capped.endswith("That is all.")
    assert parse_score("Score: 3\n" + filler, 1, 5) == 3.0
    assert parse_score(filler + "so overall 2", 1, 5) == 2.0  # the tail is read


@pytest.mark.parametrize("reply", [
    "1" * 65_536 + "a",  # one 64 KB digit run glued to a word
    "1," * 32_768 + "x",  # comma-joined digits: the ambiguous-number path
    "1." * 32_768 + "x",
    "Score " * 11_000,  # keywords with no number
    "- " * 32_768 + "3",
])
def test_adversarial_64kb_replies_parse(reply):
    """Each of these took seconds to minutes with a backtracking parser; now the cap and the atomic
    number pattern keep them linear (no timing asserted: a regression shows up as a hung test)."""
    value = parse_score(reply, 1, 5)
    assert value is None or 1 <= value <= 5
