"""The options each LLM judge accepts, and their checks: one source for `validate_backend` and the judges.

Responsible for: `ACCEPTED` (option names per judge kind), `check_options(kind, options)` which returns
every problem as (option, message) without importing a client or needing credentials, so that
`RunConfig.check()` refuses a bad judge before a run is registered, and `raise_for_problems` for the
judges' constructors. A config never holds a credential: an option whose name looks like one
(case-insensitive: `AWS_SECRET_ACCESS_KEY`, `apiKey`, `token`, ...) or whose value looks like a key is
refused, and the value is never echoed.

Not responsible for: calling endpoints (the judges), masking text (`redact`).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

ON_UNPARSED = ("worst", "mask")
BEDROCK_APIS = ("converse", "invoke")
RETRY_MODES = ("standard", "adaptive", "legacy")
HTTP_CLIENTS = ("auto", "httpx", "requests")

_COMMON = ("rubric", "name", "temperature", "top_p", "max_tokens", "max_workers", "timeout_s", "max_attempts",
           "on_unparsed", "max_failed_steps", "cache", "prices")
ACCEPTED: dict[str, tuple[str, ...]] = {
    "bedrock_judge": ("model_id", "region", "api", "endpoint_url", "retry_mode", *_COMMON),
    "openai_judge": ("base_url", "model", "api_key_env", "backoff_s", "max_backoff_s", "http_client", *_COMMON),
}
REQUIRED: dict[str, tuple[str, ...]] = {"bedrock_judge": (), "openai_judge": ("base_url", "model")}
# Options that existed once, with what replaced them.
_REPLACED = {"fallback": "replaced by on_unparsed: worst (the rubric's worst score, the default) or mask"}

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words of an option name that mark it as a credential ("aws_secret_key" -> aws, secret, key).
_SECRET_WORDS = {"secret", "password", "passwd", "pwd", "token", "credential", "credentials", "key", "apikey",
                 "accesskey", "secretkey", "authorization", "auth", "bearer", "cookie", "signature"}
_NOT_SECRET = {"api_key_env"}  # names a variable; its value is checked to be a name, not a key
_KEY_SHAPED = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{8,}|(?:AKIA|ASIA)[A-Z0-9]{12,})")


def option_words(name: str) -> list[str]:
    """The words of an option name: snake_case, kebab-case and camelCase split, lower-cased."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [w.lower() for w in re.split(r"[\s_\-.]+", spaced) if w]


def is_secret_name(name: str) -> bool:
    """Whether an option name looks like it holds a credential (case- and style-insensitive)."""
    return str(name).lower() not in _NOT_SECRET and any(w in _SECRET_WORDS for w in option_words(name))


def _number(low: float | None = None, high: float | None = None, low_open: bool = False,
            integer: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        types = (int,) if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, types) or not math.isfinite(v):
            return f"must be a finite {'integer' if integer else 'number'}, got {v!r}"
        if low is not None and (v <= low if low_open else v < low):
            return f"must be {'>' if low_open else '>='} {low}, got {v!r}"
        if high is not None and v > high:
            return f"must be <= {high}, got {v!r}"
        return None
    return check


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in allowed else f"must be one of {', '.join(allowed)}; got {v!r}"
    return check


def _text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else f"must be a non-empty string, got {v!r}"


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def _url(v: Any, optional: bool = False, example: str = "http://127.0.0.1:8000/v1") -> str | None:
    if v is None and optional:
        return None
    parts = urlsplit(v) if isinstance(v, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL such as {example}, got {v!r}"
    if parts.username or parts.password:
        return "must not contain credentials; put the key in the environment variable named by api_key_env"
    return None


def _rubric(v: Any) -> str | None:
    from engine.rewards.rubrics import get_rubric

    try:
        get_rubric(v)
    except ValueError as e:
        return str(e).removeprefix("rubric: ")
    return None


def _prices(v: Any) -> str | None:
    from engine.rewards.judge_accounting import price_table

    if v is None:
        return None
    if not isinstance(v, Mapping):
        return f"must be a mapping of model id to (input, output) USD per 1k tokens, got {v!r}"
    try:
        price_table(v)
    except ValueError as e:
        return str(e)
    return None


def _env_name(v: Any) -> str | None:
    if isinstance(v, str) and ENV_NAME.fullmatch(v):
        return None
    # The value is not echoed: a key pasted here by mistake must not end up in an error message.
    return "must be the NAME of an environment variable (like OPENAI_API_KEY), not the key itself"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "rubric": _rubric,
    "name": _text,
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0, low_open=True),
    "max_tokens": _number(1, None, integer=True),
    "max_workers": _number(1, 256, integer=True),
    "timeout_s": _number(0.0, None, low_open=True),
    "max_attempts": _number(1, 20, integer=True),
    "on_unparsed": _choice(ON_UNPARSED),
    "max_failed_steps": _number(1, None, integer=True),
    "cache": _flag,
    "prices": _prices,
    "model_id": _text,
    "region": _text,
    "api": _choice(BEDROCK_APIS),
    "endpoint_url": lambda v: _url(v, optional=True, example="https://bedrock-runtime.us-east-1.amazonaws.com"),
    "retry_mode": _choice(RETRY_MODES),
    "base_url": _url,
    "model": _text,
    "api_key_env": _env_name,
    "backoff_s": _number(0.0, None),
    "max_backoff_s": _number(0.0, None),
    "http_client": _choice(HTTP_CLIENTS),
}


def check_options(kind: str, options: Mapping[str, Any], in_config: bool = True) -> list[tuple[str, str]]:
    """Every problem of a judge's options as (option name, message); [] when they are fine.

    Checks names (secret-like, unknown with a did-you-mean, required) before values; never echoes a
    value that could be a credential. In a config (`in_config`) the judge's name is the backend's `name:`,
    so `options.name` is refused rather than silently overriding it."""
    accepted = ACCEPTED[kind]
    problems: list[tuple[str, str]] = []
    for key, value in options.items():
        key = str(key)
        if in_config and key == "name":
            problems.append((key, "set the backend's name one level up (name: next to kind:), not in options"))
        elif is_secret_name(key):
            problems.append((key, "looks like a credential: credentials are never stored in a config; use the "
                                  "AWS credential chain (bedrock_judge) or the environment variable named by "
                                  "api_key_env (openai_judge)"))
        elif key in _REPLACED and key not in accepted:
            problems.append((key, _REPLACED[key]))
        elif key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"accepted: {', '.join(sorted(accepted))}"
            problems.append((key, f"unknown option for {kind}; {hint}"))
        elif key != "api_key_env" and isinstance(value, str) and _KEY_SHAPED.search(value):
            problems.append((key, "holds what looks like a key or access key id: credentials are never stored "
                                  "in a config"))
        elif (message := _CHECKS[key](value)) is not None:
            problems.append((key, message))
    for key in REQUIRED[kind]:
        if key not in options:
            example = {"base_url": "e.g. http://127.0.0.1:8000/v1", "model": "the model name the server serves"}
            problems.append((key, f"{kind} needs options.{key} ({example[key]})"))
    if kind == "bedrock_judge" and options.get("api") == "invoke":
        model_id = options.get("model_id", "anthropic.")
        if isinstance(model_id, str) and "anthropic" not in model_id:
            problems.append(("api", f"'invoke' sends the Anthropic messages body, which model {model_id!r} does "
                                    "not take; use api: converse"))
    return problems


def raise_for_problems(kind: str, options: Mapping[str, Any]) -> None:
    """ValueError naming every problem of `options` (for the judges' constructors)."""
    problems = check_options(kind, options, in_config=False)
    if problems:
        raise ValueError("; ".join(f"{key} {message}" for key, message in problems))
