"""What an unparsed judge reply is worth in the reward: never more than the worst text (issue 11).

A real OpenAI-compatible judge (httpx) against the local endpoint of tests/judge_server.py, alone and in an
ensemble with the real profanity classifier.
"""

from __future__ import annotations

import pytest
from judge_server import FakeJudgeServer

from engine.rewards.ensemble import Ensemble
from engine.rewards.openai_judge import OpenAIJudge
from engine.rewards.profanity import ProfanityBackend

REFUSAL = "[[reply:I'm sorry, but I can't help with rating content like this.]]"


@pytest.fixture(scope="module")
def server():
    with FakeJudgeServer(default_reply="+5") as s:
        yield s


def judge(server, **kw) -> OpenAIJudge:
    kw.setdefault("timeout_s", 60)
    kw.setdefault("name", "claude")
    return OpenAIJudge(base_url=server.url + "/v1", model="judge-model", **kw)


@pytest.mark.parametrize("normalize", ["none", "zscore"])
def test_a_refused_toxic_text_does_not_outrank_a_mildly_toxic_one(server, normalize):
    """The issue's case: profanity + judge. A refusal scored the rubric's midpoint (0), which beat the
    mildly toxic text's honest -1, so the most toxic text ranked above it."""
    texts = [f"{REFUSAL} You are a fucking idiot and a piece of shit. {normalize}",
             f"[[reply:-1]] That was a bit dumb of you, honestly. {normalize}",
             f"[[reply:+5]] Thank you, this is very helpful. {normalize}",
             f"[[reply:+4]] Sure, here is a short summary. {normalize}"]
    ens = Ensemble([(ProfanityBackend(transform="p_not"), 1.0), (judge(server), 1.0)], normalize=normalize)
    result = ens.score(["p"] * 4, texts)
    most_toxic, mildly_toxic = result.scores[0], result.scores[1]
    assert result.raw["claude/parse_ok"] == [0.0, 1.0, 1.0, 1.0]
    assert most_toxic < mildly_toxic
    assert result.raw["claude"][0] == -5.0  # the refusal got the rubric's worst score


def test_mask_gives_the_mean_of_the_parsed_scores_of_the_same_prompt(server):
    j = judge(server, on_unparsed="mask", name="m")
    prompts = ["A", "A", "A", "B", "B", "C"]
    responses = ["[[reply:2]] m1", "[[reply:4]] m2", f"{REFUSAL} m3", "[[reply:-1]] m4", "[[reply:??]] m5",
                 f"{REFUSAL} m6"]
    result = j.score(prompts, responses)
    # A's refusal: the mean of A's parsed (3); B's: B's only parsed (-1); C has none: the batch's mean (5/3)
    assert result.scores == pytest.approx([2.0, 4.0, 3.0, -1.0, -1.0, 5 / 3])
    assert result.valid == [True, True, False, True, False, False]
    assert result.raw["m/parse_ok"] == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_mask_with_nothing_parsed_is_a_constant(server):
    j = judge(server, on_unparsed="mask", name="c", max_failed_steps=5, rubric="summary_quality")
    result = j.score(["p", "q"], [f"{REFUSAL} c1", "[[reply:no]] c2"])
    assert result.scores == [3.0, 3.0] and result.valid == [False, False]  # no signal either way


def test_worst_is_the_default_and_takes_the_rubric_low_end(server):
    assert judge(server, rubric="summary_quality").score(["p"], [f"{REFUSAL} w1"]).scores == [1.0]
    assert judge(server).score(["p"], [f"{REFUSAL} w2"]).scores == [-5.0]


def test_zscore_statistics_learn_only_from_parsed_scores(server):
    ens = Ensemble([(judge(server, name="z"), 1.0)], normalize="zscore")
    ens.score(["p"] * 4, ["[[reply:1]] z1", "[[reply:3]] z2", f"{REFUSAL} z3", "[[reply:nope]] z4"])
    stats = ens.stats["z"]
    assert stats.count == 2 and stats.mean == pytest.approx(2.0) and stats.std == pytest.approx(1.0)
    result = ens.score(["p"], [f"{REFUSAL} z5"])
    assert ens.stats["z"].count == 2  # a batch with nothing parsed leaves them as they were
    assert result.raw["z/normalized"] == [pytest.approx((-5.0 - 2.0) / 1.0)]


def test_rloo_grpo_reward_functions_keep_stand_ins_out_of_the_zscore_statistics(server):
    """The online methods (TRL's RLOO / GRPO) normalise each member on its own; the same rule holds there."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from engine.methods.online import reward_functions

    ens = Ensemble([(judge(server, name="o"), 1.0)], normalize="zscore")
    (func,), _, _ = reward_functions(ens)
    completions = ["[[reply:1]] o1", "[[reply:3]] o2", f"{REFUSAL} o3"]
    with ThreadPoolExecutor(1) as pool:  # a fresh loop in its own thread (a browser test may hold this one's)
        normed = pool.submit(asyncio.run, func(prompts=["p"] * 3, completions=completions)).result()
    assert ens.stats["o"].count == 2 and ens.stats["o"].mean == pytest.approx(2.0)
    assert normed == pytest.approx([-1.0, 1.0, -7.0])
