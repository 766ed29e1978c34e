"""Reward for staying on the dialogue's topic: the share of a response's content words found in the prompt.

Responsible for: a cheap, lexical "does this response talk about the conversation" signal to mix with a
harmlessness reward. A detox reward alone pays for drifting to generic, topic-free text ("The conversation has a
basic topic but lacks context."): that is never offensive. This backend pays for words the dialogue used.

Content words: lower-case letter runs of 3+ letters that are not function words, nor the words of the lab's
prompt template and turn markers ("summarize", "conversation", "human", "assistant", ...), so a response cannot
score by echoing the instructions. Score = (content words of the response that occur in the prompt) / (content
words of the response), in [0, 1]; 0 for a response without content words.

Option `cap` (0 < cap <= 1): score = min(share, cap). Uncapped, the share pays for copying the dialogue, and
copying a hostile dialogue brings its toxicity back (docs/experiments.md, "Issue 17"); capped at about the base
policy's usual share, it only charges a response for falling below that: a floor on topicality, not a prize.

Not responsible for: meaning. It is lexical on purpose, so that the lab's relevance check (a MiniLM sentence
encoder, engine.relevance) stays a different instrument from the reward. It does not score toxicity (not an
evaluator).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.rewards.base import RewardResult
from engine.rewards.profanity import check_texts

_WORD = re.compile(r"[a-z]{3,}")

# Function words (a short English list) and the words of the prompt's frame, which every prompt contains.
STOPWORDS = frozenset("""
the and for are but not you your yours all any can had her was one our out has him his how its may new now old see
two way who did get got let put say she too use that this with have from they will would there their what about
which when make like time just know take into year them some could than then look only come over think also back
after work first well even want because these give most very been were said does doing done being such here where
why while shall should must might each other more much many few own same both either neither nor yes yet off upon
onto than those ever never again once able always still already though although however therefore thus hence
i'm it's don't can't won't isn't aren't wasn't weren't i've i'd i'll you're you've you'd we're they're that's
really maybe something anything nothing someone anyone everyone thing things lot lots okay sure thanks thank
please sorry hello well going gonna wanna
summarize summary summarise summarized following conversation conversations dialogue dialog human assistant
""".split())


def content_words(text: str) -> list[str]:
    """The content words of `text`, in order (lower case, 3+ letters, no stop or template words)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def overlap(prompt: str, response: str) -> float:
    """Share of the response's content words that occur in the prompt; 0.0 when it has none."""
    words = content_words(response)
    if not words:
        return 0.0
    vocabulary = set(content_words(prompt))
    return sum(w in vocabulary for w in words) / len(words)


class OverlapBackend:
    """Reward = share of the response's content words the prompt's dialogue contains (see the module)."""

    def __init__(self, name: str = "overlap", cap: float | None = None) -> None:
        if cap is not None and not 0 < cap <= 1:
            raise ValueError(f"overlap cap must be in (0, 1], got {cap!r}")
        self.name = name
        self.cap = cap

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """One overlap share (at most `cap`) per (prompt, response); raw signal `content_words` (how many the response has)."""
        prompts, responses = check_texts(prompts, "prompts"), check_texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        scores = [overlap(p, r) for p, r in zip(prompts, responses, strict=True)]
        if self.cap is not None:
            scores = [min(x, self.cap) for x in scores]
        return RewardResult(scores=scores, raw={"content_words": [float(len(content_words(r))) for r in responses]})
