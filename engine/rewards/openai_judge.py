"""An LLM judge behind any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, llama.cpp,
Ollama, LM Studio, TGI, ...).

Responsible for: the chat-completions wire format, HTTP with a timeout (httpx when installed, else
requests), retries with exponential backoff and jitter on 429 / 5xx / connection errors (honouring
Retry-After), and reading text and token usage from the reply.

The API key is read from the environment variable named by `api_key_env` at each request; it is
never a parameter, never stored on the judge, never logged. Local servers usually need no key.

Not responsible for: concurrency, cache, parsing, fallback and accounting (`judge_accounting.Judge`).
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from engine.rewards.judge import Judge, JudgeCallError, JudgeReply
from engine.rewards.rubrics import Rubric

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Timeout(Exception):
    pass


class _ConnectionFailed(Exception):
    pass


class _HttpxTransport:
    """One httpx.Client shared by all worker threads (httpx clients are thread-safe)."""

    def __init__(self, timeout_s: float, connect_s: float, max_workers: int) -> None:
        import httpx

        self._httpx = httpx
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=connect_s),
                                    limits=httpx.Limits(max_connections=max_workers,
                                                        max_keepalive_connections=max_workers))

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Mapping[str, str], str]:
        try:
            r = self._client.post(url, content=body, headers=headers)
        except self._httpx.TimeoutException as e:
            raise _Timeout(str(e)) from None
        except self._httpx.TransportError as e:
            raise _ConnectionFailed(f"{type(e).__name__}: {e}") from None
        return r.status_code, r.headers, r.text

    def close(self) -> None:
        self._client.close()


class _RequestsTransport:
    """requests with one Session per worker thread (a Session is not documented as thread-safe)."""

    def __init__(self, timeout_s: float, connect_s: float, max_workers: int) -> None:
        import requests

        self._requests = requests
        self._timeout = (connect_s, timeout_s)
        self._local = threading.local()
        self._sessions: list[Any] = []
        self._lock = threading.Lock()

    def _session(self) -> Any:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = self._requests.Session()
            with self._lock:
                self._sessions.append(s)
        return s

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Mapping[str, str], str]:
        try:
            r = self._session().post(url, data=body, headers=headers, timeout=self._timeout)
        except self._requests.Timeout as e:
            raise _Timeout(str(e)) from None
        except self._requests.RequestException as e:
            raise _ConnectionFailed(f"{type(e).__name__}: {e}") from None
        return r.status_code, r.headers, r.text

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()


def _make_transport(http_client: str, timeout_s: float, connect_s: float, max_workers: int) -> Any:
    if http_client not in ("auto", "httpx", "requests"):
        raise ValueError(f"http_client must be 'auto', 'httpx' or 'requests', got {http_client!r}")
    if http_client in ("auto", "httpx"):
        try:
            return _HttpxTransport(timeout_s, connect_s, max_workers)
        except ImportError:
            if http_client == "httpx":
                raise ValueError("http_client='httpx' but httpx is not installed") from None
    try:
        return _RequestsTransport(timeout_s, connect_s, max_workers)
    except ImportError:
        raise ValueError("the OpenAI-compatible judge needs httpx or requests installed") from None


class OpenAIJudge(Judge):
    """Scores responses with a chat model behind an OpenAI-compatible API (see `Judge` for the batch).

    base_url: the API root, e.g. "http://127.0.0.1:8000/v1" (requests go to base_url + "/chat/completions").
    timeout_s bounds each call, retries included. Backoff before retry k (0-based) is
    backoff_s * 2**k, jittered to 50–100 %, capped at max_backoff_s; a Retry-After header raises it (capped too).
    """

    def __init__(self, base_url: str, model: str, rubric: str | Rubric | Mapping[str, Any] = "toxicity",
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: int = 300, max_workers: int = 16, timeout_s: float = 30, max_attempts: int = 5,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, fallback: float | None = None,
                 cache: bool = True, name: str | None = None, prices: Mapping[str, Any] | None = None,
                 http_client: str = "auto") -> None:
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if parts.username or parts.password:
            raise ValueError("base_url must not contain credentials; put the key in the environment variable "
                             "named by api_key_env")
        if not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env):
            # The value is not echoed: a key pasted here by mistake must not end up in an error message.
            raise ValueError("api_key_env must be the NAME of an environment variable (like OPENAI_API_KEY), "
                             "not the key itself")
        for arg, v in (("backoff_s", backoff_s), ("max_backoff_s", max_backoff_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ValueError(f"{arg} must be a finite number >= 0, got {v!r}")
        super().__init__(rubric=rubric, model_id=model, name=name or "openai_judge", temperature=temperature,
                         top_p=top_p, max_tokens=max_tokens, max_workers=max_workers, timeout_s=timeout_s,
                         max_attempts=max_attempts, fallback=fallback, cache=cache, prices=prices)
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._transport = _make_transport(http_client, self.timeout_s, min(self.timeout_s, 10.0), self.max_workers)
        self.http_client = "httpx" if isinstance(self._transport, _HttpxTransport) else "requests"

    def _repr_fields(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "http_client": self.http_client}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _body(self, text: str) -> bytes:
        messages = []
        if self.rubric.system:
            messages.append({"role": "system", "content": self.rubric.system})
        messages.append({"role": "user", "content": text})
        return json.dumps({"model": self.model_id, "messages": messages, "temperature": self.temperature,
                           "top_p": self.top_p, "max_tokens": self.max_tokens}).encode()

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.max_backoff_s))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        return delay

    def _call_one(self, text: str) -> JudgeReply:
        body = self._body(text)
        cancelled = self._cancelled()
        last = "no attempt"
        for attempt in range(self.max_attempts):
            retry_after = None
            try:
                status, headers, payload = self._transport.post(self.url, body, self._headers())
            except _Timeout:
                # The call's budget is spent: retrying would only outlive the batch's deadline.
                raise JudgeCallError(f"timed out after {self.timeout_s:g}s", retries=attempt) from None
            except _ConnectionFailed as e:
                last = str(e)
            else:
                if status == 200:
                    return self._parse(payload, retries=attempt)
                last = f"HTTP {status}: {payload[:200]}"
                if status not in RETRY_STATUS:  # 400, 401, 404...: retrying will not fix the request
                    raise JudgeCallError(last, retries=attempt)
                retry_after = headers.get("retry-after")
            if attempt + 1 < self.max_attempts and cancelled.wait(self._backoff(attempt, retry_after)):
                raise JudgeCallError(f"deadline passed; not retrying ({last})", retries=attempt)
        raise JudgeCallError(f"gave up after {self.max_attempts} attempts: {last}", retries=self.max_attempts - 1)

    @staticmethod
    def _parse(payload: str, retries: int) -> JudgeReply:
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
            if isinstance(content, list):  # some servers return content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
            usage = data.get("usage") or {}
            return JudgeReply(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                              retries)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise JudgeCallError(f"malformed chat completion ({type(e).__name__}: {e})", retries) from None

    def close(self) -> None:
        super().close()
        self._transport.close()
