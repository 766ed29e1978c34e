"""A local fake LLM endpoint for judge tests and benchmarks: speaks Bedrock runtime and OpenAI chat.

Routes (on 127.0.0.1, a free port, one thread per connection):
- POST /model/{modelId}/converse  — Bedrock Converse API response shape;
- POST /model/{modelId}/invoke    — Bedrock InvokeModel with an Anthropic messages body;
- POST /v1/chat/completions       — OpenAI chat completions.

The scenario is chosen by directives inside the judged text (the user message), so one batch can mix
them; without directives the reply is `default_reply`:
- [[reply:TEXT]]     the model answers TEXT (e.g. "[[reply:Score: 4.25, clear]]");
- [[throttle:N]]     the first N requests with this exact text are throttled (Bedrock: HTTP 429 with
                     x-amzn-ErrorType: ThrottlingException; OpenAI: HTTP 429), then the normal answer;
- [[error:N]]        the first N requests get HTTP 500 (Bedrock: InternalServerException), then the answer;
- [[fail:CODE]]      always HTTP CODE; [[fail:CODE/Type]] names the Bedrock error type (e.g.
                     [[fail:403/ExpiredTokenException]]), else it follows the table below;
- [[hang:S]]         wait S seconds (or until the server stops) before answering;
- [[malformed]]      HTTP 200 with a body that is not JSON;
- [[reset:N]]        the first N requests with this exact text get the headers and half the body of the
                     answer, then a TCP reset (a connection dropped mid-body);
- [[gather:N]]       wait until N requests carrying [[gather:N]] are in flight at once (30 s at most, then
                     HTTP 500): proves calls run concurrently without timing them;
- [[trickle:S]]      the answer's body one byte every S seconds (a server that keeps a client reading);
                     `trickles_completed` counts the bodies sent to the end;
- [[echo:CODE]]      HTTP CODE whose error message reflects the request's headers back (Authorization, the
                     AWS security token): a careless endpoint that leaks what it was sent;
- [[stop:REASON]]    the answer with this stop reason (Converse stopReason / Anthropic stop_reason /
                     OpenAI finish_reason; "max_tokens" is sent as "length" to OpenAI clients);
- [[blocks:A||B]]    the answer as several content blocks; a block written "thinking:T" is a reasoning block
                     (Converse reasoningContent, Anthropic "thinking", an OpenAI part of type "reasoning").
Bedrock errors carry the real error types: 401 UnrecognizedClientException, 403 AccessDeniedException, 429
ThrottlingException, other 4xx ValidationException, 5xx InternalServerException.
`always` is a directive string applied to every request (e.g. "[[fail:403]]" for an endpoint that denies
everything, whatever text a policy generates); `latency_s` delays every answer (benchmarks). Every request
is recorded in `requests`.
Not a test: imported by tests/test_judges*.py and bench/bench_judge.py.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

_DIRECTIVE = re.compile(r"\[\[(reply|throttle|error|fail|hang|malformed|reset|echo|stop|blocks|trickle|gather)(?::(.*?))?\]\]",
                        re.DOTALL)
_BEDROCK_ERRORS = {401: "UnrecognizedClientException", 403: "AccessDeniedException"}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (None if it was not JSON)
    text: str  # the judged user message
    time: float


def _user_text(route: str, body: Any) -> str:
    """The user message of a request, whatever its wire format."""
    try:
        content = body["messages"][-1]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


class FakeJudgeServer:
    """Start with `with FakeJudgeServer() as server:`; `server.url` is http://127.0.0.1:<port>."""

    def __init__(self, default_reply: str = "+5", latency_s: float = 0.0, always: str = "") -> None:
        self.default_reply = default_reply
        self.latency_s = latency_s
        self.always = always
        self.trickles_completed = 0
        self._barriers: dict[int, threading.Barrier] = {}
        self.requests: list[RecordedRequest] = []
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeJudgeServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, client_address: None  # clients that hung up are expected
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers that hang
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeJudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def requests_for(self, needle: str) -> list[RecordedRequest]:
        """The recorded requests whose judged text contains `needle`."""
        with self._lock:
            return [r for r in self.requests if needle in r.text]

    # -- behaviour ------------------------------------------------------------------------------

    def _nth(self, kind: str, text: str) -> int:
        """How many requests of this kind with this text came before (0 for the first)."""
        with self._lock:
            n = self._counts.get((kind, text), 0)
            self._counts[(kind, text)] = n + 1
            return n

    def plan(self, text: str) -> tuple[str, Any]:
        """What to answer for `text`: ("reply", str) | ("throttle", None) | ("error", code) | ("hang", s) |
        ("malformed", None) | ("reset", str) | ("echo", code)."""
        directives = {m.group(1): m.group(2) for m in _DIRECTIVE.finditer(text + self.always)}
        if "hang" in directives:
            return "hang", float(directives["hang"] or 60)
        if "malformed" in directives:
            return "malformed", None
        if "echo" in directives:
            return "echo", int(directives["echo"] or 403)
        if "fail" in directives:
            code, _, kind = (directives["fail"] or "400").partition("/")
            return "error", (int(code), kind or None)
        if "reset" in directives and self._nth("reset", text) < int(directives["reset"] or 1):
            return "reset", directives.get("reply", self.default_reply)
        if "throttle" in directives and self._nth("throttle", text) < int(directives["throttle"] or 1):
            return "throttle", None
        if "error" in directives and self._nth("error", text) < int(directives["error"] or 1):
            return "error", (500, None)
        return "reply", directives.get("reply", self.default_reply)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeJudgeServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints
    # Send each response in one TCP segment: headers and body written apart meet Nagle's algorithm and the
    # client's delayed ACK, adding ~40 ms per call that no real endpoint has.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # flushed at the end of each request by BaseHTTPRequestHandler

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        path = unquote(self.path)
        if path.startswith("/model/") and path.endswith("/converse"):
            route = "converse"
        elif path.startswith("/model/") and path.endswith("/invoke"):
            route = "invoke"
        elif path.rstrip("/").endswith("/chat/completions"):
            route = "openai"
        else:
            self._send(404, {"message": f"no route {path}"})
            return
        text = _user_text(route, body)
        fake = self.fake
        with fake._lock:
            fake.requests.append(RecordedRequest(path, dict(self.headers.items()), body, text, time.time()))
        if fake.latency_s:
            time.sleep(fake.latency_s)
        action, arg = fake.plan(text)
        directives = {m.group(1): m.group(2) for m in _DIRECTIVE.finditer(text + fake.always)}
        if "gather" in directives:
            n = int(directives["gather"] or 2)
            with fake._lock:
                barrier = fake._barriers.setdefault(n, threading.Barrier(n))
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                with fake._lock:
                    fake._barriers.pop(n, None)
                action, arg = "error", (500, None)
        if action == "hang":
            fake._stop.wait(arg)
            if fake._stop.is_set():
                return
            action, arg = "reply", fake.default_reply
        if action == "throttle":
            if route == "openai":
                self._send(429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
                           {"Retry-After": "0"})
            else:
                self._send(429, {"message": "Too many requests, please wait before trying again."},
                           {"x-amzn-ErrorType": "ThrottlingException"})
            return
        if action == "error":
            code, kind = arg
            if route == "openai":
                self._send(code, {"error": {"message": f"server error {code}", "type": "server_error"}})
            else:
                kind = kind or _BEDROCK_ERRORS.get(code, "InternalServerException" if code >= 500
                                                   else "ValidationException")
                self._send(code, {"message": f"{kind} from the fake"}, {"x-amzn-ErrorType": kind})
            return
        if action == "echo":
            leak = f"denied; you sent {dict(self.headers.items())!r}"
            if route == "openai":
                self._send(arg, {"error": {"message": leak, "type": "auth"}})
            else:
                kind = _BEDROCK_ERRORS.get(arg, "ValidationException")
                self._send(arg, {"message": leak}, {"x-amzn-ErrorType": kind})
            return
        if action == "malformed":
            self._send(200, b'{"output": {"message": {"content": [{"text": "+5"')  # cut short
            return
        reply_body = self._reply_body(route, body, text, arg, directives.get("stop"), directives.get("blocks"))
        if action == "reset":
            self._reset_mid_body(json.dumps(reply_body).encode())
            return
        if "trickle" in directives:
            self._trickle(json.dumps(reply_body).encode(), float(directives["trickle"] or 0.2))
            return
        self._send(200, reply_body)

    @staticmethod
    def _reply_body(route: str, body: Any, text: str, reply: str, stop: str | None = None,
                    blocks: str | None = None) -> dict[str, Any]:
        n_in, n_out = len(text.split()), max(len(reply.split()), 1)
        parts = blocks.split("||") if blocks is not None else [reply]

        def block(part: str) -> dict[str, Any]:
            thinking = part.startswith("thinking:")
            part = part.removeprefix("thinking:")
            if route == "converse":
                return {"reasoningContent": {"reasoningText": {"text": part}}} if thinking else {"text": part}
            if route == "invoke":
                return {"type": "thinking", "thinking": part} if thinking else {"type": "text", "text": part}
            return {"type": "reasoning", "text": part} if thinking else {"type": "text", "text": part}

        if route == "converse":
            return {"output": {"message": {"role": "assistant", "content": [block(p) for p in parts]}},
                    "stopReason": stop or "end_turn", "usage": {"inputTokens": n_in, "outputTokens": n_out,
                                                                "totalTokens": n_in + n_out},
                    "metrics": {"latencyMs": 1}}
        if route == "invoke":
            return {"id": "msg_fake", "type": "message", "role": "assistant", "model": "fake",
                    "content": [block(p) for p in parts], "stop_reason": stop or "end_turn",
                    "usage": {"input_tokens": n_in, "output_tokens": n_out}}
        content: Any = [block(p) for p in parts] if blocks is not None else reply
        finish = {"max_tokens": "length"}.get(stop or "", stop or "stop")
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": (body or {}).get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}

    def _trickle(self, data: bytes, every_s: float) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(data)):
                if self.fake._stop.wait(every_s):
                    return
                self.wfile.write(data[i: i + 1])
                self.wfile.flush()
        except OSError:
            self.close_connection = True
            return  # the client hung up mid-body
        with self.fake._lock:
            self.fake.trickles_completed += 1

    def _reset_mid_body(self, data: bytes) -> None:
        """The status line, the headers and half the body, then a TCP reset (SO_LINGER 0 on close)."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", "fake-request-id")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True
        try:
            self.connection.close()  # with linger 0: RST, not FIN
        except OSError:
            pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", "fake-request-id")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


def set_dummy_aws_env(monkeypatch: Any, tmp_path: Any, key_id: str, secret: str, token: str) -> None:
    """Dummy credentials in the environment, and nothing else of the AWS chain (no ~/.aws, no metadata)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
