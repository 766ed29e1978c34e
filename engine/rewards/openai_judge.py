"""An LLM judge behind any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, llama.cpp,
Ollama, LM Studio, TGI, ...).

Responsible for: the chat-completions wire format, HTTP (httpx when installed, else requests) with
every read bounded by the call's deadline (counted from submission) and the reply body capped, retries
with exponential backoff and jitter on 429 / 5xx / connection errors (honouring Retry-After), and
reading the text content parts, token usage and finish reason from the reply. HTTP 401 / 403 raise
`JudgeAuthError`, which stops the run.

The API key is read from the environment variable named by `api_key_env` at each request; it is
never a parameter, never stored on the judge, never logged (messages are redacted). Local servers
usually need no key: an unset variable is a warning when the judge is built, not an error, and a
401 / 403 then says that it is unset.

Not responsible for: concurrency, cache, parsing, on_unparsed and accounting (`judge.Judge`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from engine.rewards.judge import Judge, JudgeAuthError, JudgeCallError, JudgeReply
from engine.rewards.judge_options import raise_for_problems
from engine.rewards.rubrics import Rubric

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_BODY_BYTES = 1 << 20  # a chat completion is a few KB; a larger body is refused, not parsed
_CHUNK = 16 << 10
# finish_reason values whose text is never scored
_STOP = {"length": "max_tokens", "max_tokens": "max_tokens", "content_filter": "refused"}


class _Timeout(Exception):
    pass


class _ConnectionFailed(Exception):
    pass


def _read_capped(chunks: Any, deadline: float) -> bytes:
    """The body from an iterator of chunks, refused past the deadline or past MAX_BODY_BYTES."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        if len(buf) > MAX_BODY_BYTES:
            raise _ConnectionFailed(f"reply body larger than {MAX_BODY_BYTES} bytes")
        if time.monotonic() > deadline:  # a server trickling bytes must not hold the worker forever
            raise _Timeout("deadline passed while reading the body")
    return bytes(buf)


class _HttpxTransport:
    """One httpx.Client shared by all worker threads (httpx clients are thread-safe)."""

    def __init__(self, connect_s: float, max_workers: int) -> None:
        import httpx

        self._httpx = httpx
        self._connect_s = connect_s
        self._client = httpx.Client(limits=httpx.Limits(max_connections=max_workers,
                                                        max_keepalive_connections=max_workers))

    def post(self, url: str, body: bytes, headers: dict[str, str],
             deadline: float) -> tuple[int, Mapping[str, str], str]:
        left = max(deadline - time.monotonic(), 0.001)
        timeout = self._httpx.Timeout(left, connect=min(left, self._connect_s))
        try:
            with self._client.stream("POST", url, content=body, headers=headers, timeout=timeout) as r:
                data = _read_capped(r.iter_bytes(), deadline)  # decoded, as they arrive (a size would buffer)
                return r.status_code, r.headers, data.decode(r.encoding or "utf-8", errors="replace")
        except self._httpx.TimeoutException as e:
            raise _Timeout(str(e)) from None
        except self._httpx.TransportError as e:
            raise _ConnectionFailed(f"{type(e).__name__}: {e}") from None

    def close(self) -> None:
        self._client.close()


class _RequestsTransport:
    """requests with one Session per worker thread (a Session is not documented as thread-safe)."""

    def __init__(self, connect_s: float, max_workers: int) -> None:
        import requests

        self._requests = requests
        self._connect_s = connect_s
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

    def post(self, url: str, body: bytes, headers: dict[str, str],
             deadline: float) -> tuple[int, Mapping[str, str], str]:
        left = max(deadline - time.monotonic(), 0.001)
        try:
            with self._session().post(url, data=body, headers=headers, stream=True,
                                      timeout=(min(left, self._connect_s), left)) as r:
                data = _read_capped(self._chunks(r.raw), deadline)
                return r.status_code, r.headers, data.decode(r.encoding or "utf-8", errors="replace")
        except self._requests.Timeout as e:
            raise _Timeout(str(e)) from None
        except self._requests.RequestException as e:
            raise _ConnectionFailed(f"{type(e).__name__}: {e}") from None
        except Exception as e:  # urllib3 errors raised while streaming the body
            if "timed out" in str(e).lower():
                raise _Timeout(str(e)) from None
            raise _ConnectionFailed(f"{type(e).__name__}: {e}") from None

    @staticmethod
    def _chunks(raw: Any) -> Any:
        """The body as it arrives: read1 returns what one receive gave (stream(n) would wait for n bytes)."""
        while chunk := raw.read1(_CHUNK, decode_content=True):
            yield chunk

    def close(self) -> None:
        with self._lock:
            for s in self._sessions:
                s.close()


def _make_transport(http_client: str, connect_s: float, max_workers: int) -> Any:
    if http_client in ("auto", "httpx"):
        try:
            return _HttpxTransport(connect_s, max_workers)
        except ImportError:
            if http_client == "httpx":
                raise ValueError("http_client='httpx' but httpx is not installed") from None
    try:
        return _RequestsTransport(connect_s, max_workers)
    except ImportError:
        raise ValueError("the OpenAI-compatible judge needs httpx or requests installed") from None


class OpenAIJudge(Judge):
    """Scores responses with a chat model behind an OpenAI-compatible API (see `Judge` for the batch).

    base_url: the API root, e.g. "http://127.0.0.1:8000/v1" (requests go to base_url + "/chat/completions").
    timeout_s bounds each call from its submission, queue and retries included. Backoff before retry k (0-based) is
    backoff_s * 2**k, jittered to 50–100 %, capped at max_backoff_s; a Retry-After header raises it (capped too).
    """

    def __init__(self, base_url: str, model: str, rubric: str | Rubric | Mapping[str, Any] = "toxicity",
                 api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: int = 300, max_workers: int = 16, timeout_s: float = 30, max_attempts: int = 5,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, on_unparsed: str = "worst",
                 max_failed_steps: int = 3, cache: bool = True, name: str | None = None,
                 prices: Mapping[str, Any] | None = None, http_client: str = "auto") -> None:
        options = dict(base_url=base_url, model=model, rubric=rubric, api_key_env=api_key_env,
                       temperature=temperature, top_p=top_p, max_tokens=max_tokens, max_workers=max_workers,
                       timeout_s=timeout_s, max_attempts=max_attempts, backoff_s=backoff_s,
                       max_backoff_s=max_backoff_s, on_unparsed=on_unparsed, max_failed_steps=max_failed_steps,
                       cache=cache, prices=prices, http_client=http_client)
        if name is not None:
            options["name"] = name
        raise_for_problems("openai_judge", options)
        super().__init__(rubric=rubric, model_id=model, name=name or "openai_judge", temperature=temperature,
                         top_p=top_p, max_tokens=max_tokens, max_workers=max_workers, timeout_s=timeout_s,
                         max_attempts=max_attempts, on_unparsed=on_unparsed, max_failed_steps=max_failed_steps,
                         cache=cache, prices=prices)
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._transport = _make_transport(http_client, min(self.timeout_s, 10.0), self.max_workers)
        self.http_client = "httpx" if isinstance(self._transport, _HttpxTransport) else "requests"
        if not os.environ.get(api_key_env):
            log.warning("judge %s: environment variable %s is not set; requests go without an Authorization "
                        "header (fine for a local server)", self.name, api_key_env)

    def _repr_fields(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "http_client": self.http_client}

    def _secrets(self) -> list[str]:
        key = os.environ.get(self.api_key_env)
        return [key] if key else []

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
        cancelled, deadline = self._cancelled(), self._deadline()
        last = "no attempt"
        for attempt in range(self.max_attempts):
            retry_after = None
            try:
                status, headers, payload = self._transport.post(self.url, body, self._headers(), deadline)
            except _Timeout:
                # The call's budget is spent: retrying would only outlive the batch's deadline.
                raise JudgeCallError(f"timed out after {self.timeout_s:g}s", retries=attempt,
                                     timed_out=True) from None
            except _ConnectionFailed as e:
                last = str(e)
            else:
                if status == 200:
                    return self._parse(payload, retries=attempt)
                last = f"HTTP {status}: {payload[:300]}"
                if status in (401, 403):
                    hint = ("" if os.environ.get(self.api_key_env) else
                            f" (environment variable {self.api_key_env} is not set)")
                    raise JudgeAuthError(last + hint, retries=attempt)
                if status not in RETRY_STATUS:  # 400, 404...: retrying will not fix the request
                    raise JudgeCallError(last, retries=attempt)
                retry_after = headers.get("retry-after")
            if attempt + 1 < self.max_attempts and cancelled.wait(self._backoff(attempt, retry_after)):
                raise JudgeCallError(f"deadline passed; not retrying ({last})", retries=attempt)
        raise JudgeCallError(f"gave up after {self.max_attempts} attempts: {last}", retries=self.max_attempts - 1)

    @staticmethod
    def _parse(payload: str, retries: int) -> JudgeReply:
        try:
            data = json.loads(payload)
            choice = data["choices"][0]
            message = choice["message"]
            content = message.get("content")
            if isinstance(content, list):  # content parts: the text ones only, one per line
                content = "\n".join(p["text"] for p in content
                                     if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
            if content is None and message.get("refusal"):
                content = ""
            if not isinstance(content, str):
                raise TypeError(f"content is {type(content).__name__}")
            stop = _STOP.get(choice.get("finish_reason"), "end")
            if message.get("refusal"):  # OpenAI's structured refusal
                stop = "refused"
            usage = data.get("usage") or {}
            return JudgeReply(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                              retries, stop=stop)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise JudgeCallError(f"malformed chat completion ({type(e).__name__}: {e})", retries) from None

    def close(self) -> None:
        super().close()
        self._transport.close()
