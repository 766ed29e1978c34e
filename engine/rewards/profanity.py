"""Reward from `alt-profanity-check`: a small offline sklearn classifier of offensive language.

Responsible for: turning the package's P(offensive) into a reward (log-odds of "not offensive") and a
toxicity probability. The model (a linear SVM over a bag of words, calibrated) ships inside the PyPI
package, so this backend works with no network and no GPU.

Not responsible for: anything semantic. The model is lexical: it flags swear words and insults but
misses polite threats ("People like you should be exterminated." ≈ 0.10). Pair it with a neural
classifier when that matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.rewards.base import RewardResult, check_finite_cap, texts_to_score

# p is clipped to [EPS, 1 - EPS] before the log-odds, so the reward stays within about ±13.8.
EPS = 1e-6

# How P(offensive) becomes the reward:
# - log_odds: log(1 - p) - log(p), unbounded in both directions. Cleaning an already clean text (p 0.05 -> 0.01,
#   +1.6) is worth a third of removing an insult (p 0.9 -> 0.1, +4.4), so much of the KL budget goes to the bulk.
# - p_not: 1 - p, linear in the probability that mean toxicity averages: the insult is worth 20 times the clean-up,
#   so the policy spends its KL where the mean toxicity is. Scale it with the backend's weight.
TRANSFORMS = ("log_odds", "p_not")


def log_odds_not(p: float, eps: float = EPS) -> float:
    """log(1 - p) - log(p), with p clipped to [eps, 1 - eps]: high when the text is unlikely offensive."""
    p = min(max(p, eps), 1.0 - eps)
    return math.log1p(-p) - math.log(p)


def check_texts(texts: Sequence[str], arg: str = "texts") -> list[str]:
    """The texts as a list, or a ValueError naming the first item that is not a string."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{arg}[{i}] must be a str, got {type(t).__name__}")
    return texts


class ProfanityBackend:
    """Reward = log-odds that the text is not offensive (or 1 - P(offensive), `transform="p_not"`), by
    alt-profanity-check.

    `cap`: score = min(transformed score, cap). Uncapped log-odds keep paying for making a clean text cleaner, and
    the cleanest texts are generic ones that leave the dialogue's topic; capped near the base policy's usual score,
    the reward stops paying once a response is clean enough, and its gradient goes to the offensive tail.

    raw signals: `p_offensive` per item. `toxicity(texts)` gives the same P(offensive).
    """

    def __init__(self, name: str = "profanity", score_on: str = "response", transform: str = "log_odds",
                 cap: float | None = None) -> None:
        texts_to_score([], [], score_on)  # validates score_on early
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
        check_finite_cap(cap, "profanity")
        self.name = name
        self.score_on = score_on
        self.transform = transform
        self.cap = cap

    def p_offensive(self, texts: Sequence[str]) -> list[float]:
        """P(offensive) per text, in [0, 1]."""
        texts = check_texts(texts)
        if not texts:  # the package's vectoriser cannot take an empty batch
            return []
        # Imported here: loading the joblib model takes over a second.
        from profanity_check import predict_prob

        return [float(p) for p in predict_prob(texts)]

    def toxicity(self, texts: Sequence[str]) -> list[float]:
        """P(offensive) per text (the ToxicityScorer interface)."""
        return self.p_offensive(texts)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> RewardResult:
        """Reward of each (prompt, response) from P(offensive) of the text given by `score_on` (see TRANSFORMS)."""
        texts = texts_to_score(check_texts(prompts, "prompts"), check_texts(responses, "responses"), self.score_on)
        probs = self.p_offensive(texts)
        scores = [log_odds_not(p) for p in probs] if self.transform == "log_odds" else [1.0 - p for p in probs]
        if self.cap is not None:
            scores = [min(x, self.cap) for x in scores]
        return RewardResult(scores=scores, raw={"p_offensive": probs})
