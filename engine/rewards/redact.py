"""Masking secrets in text that leaves a reward backend: judge warnings, errors stored on a run, logs.

Responsible for: `redact(text, secrets)`, which replaces the given secret values (an API key read from
the environment, AWS credentials) and anything shaped like a credential (Authorization headers, bearer
tokens, AWS signatures and session tokens, OpenAI-style and AWS access keys) with "<redacted>".
An endpoint that echoes the request in its error body must not put the key into a run's record.

Not responsible for: deciding which options may hold secrets (`judge_options`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "<redacted>"
_MIN_SECRET = 6  # shorter "secrets" (empty, "x") would mask ordinary words

_PATTERNS = (
    # "Authorization: Bearer sk-...", "authorization': 'AWS4-HMAC-SHA256 Credential=..." up to the line / quote end
    (re.compile(r"(authorization[\\'\"]*\s*[:=]\s*b?[\\'\"]*)[^'\"\\\r\n]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"((?:Credential|Signature|SignedHeaders)=)[^\s,'\"&]+"), r"\1" + MASK),
    (re.compile(r"((?:x-amz-security-token|X-Amz-Signature|X-Amz-Credential)[\\'\"]*\s*[:=]\s*b?[\\'\"]*)"
                r"[^'\"\\\s,&]+",
                re.IGNORECASE), r"\1" + MASK),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), MASK),  # OpenAI-style keys
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b"), MASK),  # AWS access key ids
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every given secret value and every credential-shaped substring replaced by MASK."""
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
