"""Reading a score out of an LLM judge's free-text reply, exactly or not at all.

Responsible for: `parse_score(text, low, high)`, which accepts the many ways models write a number
("+5", "Score: 4.25", "**Rating:** -2", "I'd rate it 3.5/5 because ...") and returns None for replies
with no unambiguous score in [low, high]. A None is never turned into a number here: the judge decides
what an unparsed reply is worth (see `Judge`, option `on_unparsed`).

Rules, in order:
1. Reasoning is not the answer: text up to the last `</thinking>`, `</think>` or `</reasoning>` is
   dropped, and a reasoning block that is never closed (a reply cut short) leaves no answer.
2. Long replies are capped: only the first and last `HEAD_CHARS` / `TAIL_CHARS` characters are read
   (a judge's answer is at its start or its end), so a runaway reply costs microseconds.
3. Numbers that describe the scale are ignored: both ends of a range ("1-5", "-5 to +5", "from 1 to 5",
   "between 1 and 5") and a denominator ("/5", "out of 5").
4. A score written over a denominator counts only when the denominator is the rubric's top: "3.5/5" on
   a 1–5 scale is 3.5, "4/10" or "4 out of 10" is refused (another scale, not a 4).
5. "4,5" is refused (a decimal comma, or two numbers: either way not a 4).
6. The answer, by priority: the last explicitly labelled score ("Score: 4", "Rating = 3", "Final
   answer: -2"; a label followed by something that is not a number, such as "Score: N/A", means the
   judge gave none); else the last number a keyword introduces ("I'd rate it 3", "the score is 5");
   else the last number in the reply ("... 2 sentences ... so overall -4" is -4). The chosen number
   must lie in [low, high]; out-of-range numbers are refused, never clipped.

Every step is one left-to-right pass (regexes with atomic groups, constant-size look-arounds), so
parsing is linear in the (capped) reply length.

Not responsible for: calling models, stop reasons, what an unparsed reply scores (the judges).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

HEAD_CHARS = 2048  # a reply longer than HEAD_CHARS + TAIL_CHARS is read at both ends only
TAIL_CHARS = 2048
_CAP_SEPARATOR = "\n[...]\n"

_REASONING_CLOSE = ("</thinking>", "</think>", "</reasoning>")
_REASONING_OPEN = ("<think", "<reasoning")  # "<think" also opens "<thinking>"

# A number not glued to a word or to another number ("v1.2", "3rd", "4.5.1" are not numbers). The body is
# atomic ((?>...)): once matched it is never re-split, so a 64 KB run of digits costs one pass. A comma
# inside the body ("4,5") is kept in the token so that it can be refused as ambiguous.
_NUMBER = re.compile(r"(?<![\w.,])([-+]?)((?>\d+(?:[.,]\d+)*+|\.\d+))(?![\w])")
_LABEL = re.compile(r"\b(?:final\s+(?:score|rating|answer|verdict)|score|rating|verdict|answer)\b"
                    r"(?>[ \t*_]*)[:=]", re.IGNORECASE)
_KEYWORD = re.compile(r"\b(?:score[ds]?|rating|rate[ds]?)\b", re.IGNORECASE)
# After a label, before its value: blanks and markup only ("Score: **4**", "Rating: [3]").
_LABEL_PAD = re.compile(r"[ \t*_\[(\"'`]*")
_MAX_GAP = 30  # a keyword introduces a number at most this many characters on, with no digit or sentence end
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_WINDOW = 24  # characters looked at on either side of a number to tell scale descriptions apart
_DENOMINATOR_BEFORE = re.compile(r"(?:/|\bout\s+of|\bof\s+max(?:imum)?)\s*$", re.IGNORECASE)
_DENOMINATOR_AFTER = re.compile(r"^\s*(?:/|out\s+of\b)\s*([-+]?(?:\d+(?:\.\d+)?|\.\d+))(?!\w|[.,]\d)",
                                re.IGNORECASE)
_RANGE_JOIN_AFTER = re.compile(r"^\s*(?:to|-|–|—|through|and)\s*[-+]?\.?\d", re.IGNORECASE)
_RANGE_JOIN_BEFORE = re.compile(r"(?:\d\s*(?:to|–|—|through)\s*|\d-|\bbetween\s+[-+]?[\d.]+\s+and\s+)$",
                                re.IGNORECASE)
_FROM_BEFORE = re.compile(r"\b(?:from|between|scale\s+of)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class _Num:
    start: int
    end: int
    value: float | None  # None: not a usable number (ambiguous "4,5", or a score on another scale)


def answer_text(text: str) -> str:
    """The part of a reply that can hold the answer: reasoning dropped (rules 1) and length capped (rule 2)."""
    text = text.replace("\u2212", "-")  # the Unicode minus sign some models emit
    low = text.lower()
    cut = max((i + len(tag) for tag in _REASONING_CLOSE if (i := low.rfind(tag)) >= 0), default=0)
    if cut:
        text, low = text[cut:], low[cut:]
    opened = min((i for tag in _REASONING_OPEN if (i := low.find(tag)) >= 0), default=-1)
    if opened >= 0:  # reasoning that never closed: the reply was cut inside it
        text = text[:opened]
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + _CAP_SEPARATOR + text[-TAIL_CHARS:]
    return text


def _numbers(text: str, high: float) -> list[_Num]:
    """Every number in `text` that is not part of the scale's description, in order."""
    out = []
    for m in _NUMBER.finditer(text):
        start, end = m.start(), m.end()
        before = text[max(0, start - _WINDOW): start]
        after = text[end: end + _WINDOW]
        if _DENOMINATOR_BEFORE.search(before):
            continue  # "3.5/5", "4 out of 5": the 5 is the scale
        if _RANGE_JOIN_AFTER.match(after) or _RANGE_JOIN_BEFORE.search(before) or _FROM_BEFORE.search(before):
            continue  # "1-5", "-5 to +5", "from 1.00", "between 1 and 5": ends of the scale
        body = m.group(2)
        value: float | None = None
        if "," not in body and body.count(".") <= 1:
            value = float(m.group(1) + body)
            if not math.isfinite(value):
                value = None
            elif (den := _DENOMINATOR_AFTER.match(after)) and float(den.group(1)) != float(high):
                value = None  # "4/10" on a 1-5 scale: a score on another scale, refused
        elif body.count(".") > 1 and "," not in body:
            continue  # "1.2.3": a version or a date, not a number at all
        out.append(_Num(start, end, value))
    return out


def _next_number(nums: list[_Num], starts: list[int], pos: int) -> _Num | None:
    i = bisect.bisect_left(starts, pos)
    return nums[i] if i < len(nums) else None


def _in_range(value: float | None, low: float, high: float) -> float | None:
    return value if value is not None and low <= value <= high else None


def parse_score(text: str | None, low: float, high: float) -> float | None:
    """The judge's score in [low, high] read from `text`, or None when there is no unambiguous one."""
    if not text:
        return None
    text = answer_text(text)
    nums = _numbers(text, high)
    starts = [n.start for n in nums]

    # 1. explicit labels: the last one decides (a label with no number after it is "no score")
    labelled: list[float | None] = []
    for m in _LABEL.finditer(text):
        pad = _LABEL_PAD.match(text, m.end())
        pos = pad.end() if pad else m.end()
        nxt = _next_number(nums, starts, pos)
        labelled.append(nxt.value if nxt is not None and nxt.start == pos else None)
    if labelled:
        return _in_range(labelled[-1], low, high)

    # 2. numbers a keyword introduces ("I'd rate it 3", "the score is 5"): the last one
    introduced = None
    for kw in _KEYWORD.finditer(text):
        nxt = _next_number(nums, starts, kw.end())
        if nxt is None:
            break
        gap = text[kw.end(): nxt.start]
        if len(gap) > _MAX_GAP or any(c.isdigit() for c in gap) or _SENTENCE_END.search(gap):
            continue  # the keyword does not introduce this number ("rate the text below ... 3")
        introduced = nxt
    if introduced is not None:
        return _in_range(introduced.value, low, high)

    # 3. the last number of the reply
    return _in_range(nums[-1].value, low, high) if nums else None
