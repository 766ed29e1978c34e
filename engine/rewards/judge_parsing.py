"""Reading a score out of an LLM judge's free-text reply.

Responsible for: `parse_score(text, low, high)`, which accepts the many ways models write a number
("+5", "Score: 4.25", "**Rating:** -2", "I'd rate it 3.5/5 because ...") and rejects replies with no
usable number. The seed never parsed the judge's text into a number (trap 5); this is that step.

Rules, in order:
1. Numbers that describe the scale are ignored: a denominator ("/5", "out of 5") and both ends of a
   range ("1-5", "-5 to +5", "from 1.00 to 5.00").
2. A number right after a keyword (score, rating, rate, rated; a few words or symbols may sit
   between, no digits, no sentence end) wins; if it lies outside [low, high] the reply is rejected.
3. Otherwise the first number inside [low, high] wins.
4. No number → None. Out-of-range numbers never become scores (no clipping): "8/10" on a 1–5
   rubric is a different scale, not a 5.

Not responsible for: calling models or deciding the fallback score (see the judges).
"""

from __future__ import annotations

import math
import re

# A signed decimal that is not glued to a word or to another number: "v1", "3rd", "1.2.3" do not match.
# A "-" directly after a digit is a hyphen ("1-5"), so the sign is only taken when not preceded by \w.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?![\w]|\.\d)")
_KEYWORD = re.compile(r"\b(?:score[ds]?|rating|rate[ds]?)\b", re.IGNORECASE)
# Between a keyword and its number: at most this many characters, with no digit and no sentence end.
_MAX_GAP = 30
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_DENOMINATOR_BEFORE = re.compile(r"(?:/|\bout\s+of|\bof\s+max(?:imum)?)\s*$", re.IGNORECASE)
_RANGE_JOIN_AFTER = re.compile(r"^\s*(?:to|-|–|—|through)\s*[-+]?\.?\d", re.IGNORECASE)
_RANGE_JOIN_BEFORE = re.compile(r"(?:\d\s*(?:to|–|—|through)\s*|\d-)$", re.IGNORECASE)
_FROM_BEFORE = re.compile(r"\b(?:from|between)\s*$", re.IGNORECASE)


def _normalise(text: str) -> str:
    # The Unicode minus sign some models emit for negative numbers.
    return text.replace("\u2212", "-")


def _candidates(text: str) -> list[tuple[int, float]]:
    """(start offset, value) of every number in `text` that is not part of the scale's description."""
    out = []
    for m in _NUMBER.finditer(text):
        before, after = text[: m.start()], text[m.end():]
        if _DENOMINATOR_BEFORE.search(before):
            continue  # "3.5/5", "4 out of 5": the 5 is the scale
        if _RANGE_JOIN_AFTER.match(after) or _RANGE_JOIN_BEFORE.search(before) or _FROM_BEFORE.search(before):
            continue  # "1-5", "-5 to +5", "from 1.00": ends of the scale
        value = float(m.group())
        if math.isfinite(value):
            out.append((m.start(), value))
    return out


def parse_score(text: str | None, low: float, high: float) -> float | None:
    """The judge's score in [low, high] read from `text`, or None when there is no usable number."""
    if not text:
        return None
    text = _normalise(text)
    nums = _candidates(text)
    if not nums:
        return None
    for kw in _KEYWORD.finditer(text):
        following = [(pos, v) for pos, v in nums if pos >= kw.end()]
        if not following:
            break
        pos, value = following[0]
        gap = text[kw.end(): pos]
        if len(gap) > _MAX_GAP or any(c.isdigit() for c in gap) or _SENTENCE_END.search(gap):
            continue  # the keyword is not introducing this number ("rate the text below ... 3")
        return value if low <= value <= high else None
    for _, value in nums:
        if low <= value <= high:
            return value
    return None
