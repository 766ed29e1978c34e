"""An LLM judge on Amazon Bedrock (the seed's Claude 3 Sonnet toxicity judge, done properly).

Responsible for: the Bedrock wire formats (Converse API, or InvokeModel with the Anthropic messages
body), one boto3 `bedrock-runtime` client shared by all worker threads (clients are thread-safe,
sessions are not), botocore's retries and timeouts, and reading text, token usage, retry counts and
the stop reason out of the responses.

Retries: botocore's `standard` mode by default. `adaptive` adds a client-side rate limiter that, once
throttled, slows every later call of the client: measured here (bench/bench_judge.py), it turned two
throttles per call into timeouts for most of a batch and slowed the next batches several-fold.
InvokeModel's body is read inside botocore's retry loop (a connection reset mid-body is retried like
any other connection error, not turned into a failed call).
Authentication / authorisation errors (AccessDenied, UnrecognizedClient, ExpiredToken, HTTP 401/403)
raise `JudgeAuthError`, which stops the run.

Credentials come only from boto3's standard chain (environment, ~/.aws files, SSO, instance or
container role). They are never parameters, never stored on the judge, never logged by it.

Not responsible for: concurrency, cache, parsing, on_unparsed and accounting (`judge.Judge`).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from engine.rewards.judge import Judge, JudgeAuthError, JudgeCallError, JudgeReply
from engine.rewards.judge_options import raise_for_problems
from engine.rewards.redact import redact
from engine.rewards.rubrics import Rubric

DEFAULT_MODEL = "anthropic.claude-3-sonnet-20240229-v1:0"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
# Error codes that mean the credentials themselves are refused: retrying or falling back cannot help.
AUTH_ERROR_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "ExpiredTokenException",
    "ExpiredToken", "InvalidSignatureException", "IncompleteSignatureException", "SignatureDoesNotMatch",
    "MissingAuthenticationTokenException", "InvalidClientTokenId", "UnauthorizedException",
})
# Stop reasons (Converse stopReason, Anthropic stop_reason) whose text is never scored.
_STOP = {"max_tokens": "max_tokens", "content_filtered": "refused", "guardrail_intervened": "refused",
         "refusal": "refused"}


# botocore's DEBUG logs print the signed request (the access key id in "Credential=", the session token in
# full) and the response bodies (an endpoint that echoes the request puts them there too). This filter, put on
# the loggers that print them, masks anything credential-shaped (engine.rewards.redact).
_LEAKY_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers", "botocore.hooks", "botocore.retryhandler")


class _RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_log_redaction() -> None:
    for name in _LEAKY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactCredentials) for f in logger.filters):
            logger.addFilter(_RedactCredentials())


class _Abandoned(Exception):
    """Raised before a retry of a call the batch already gave up on (its deadline passed)."""


class BedrockJudge(Judge):
    """Scores responses with a Bedrock model and a rubric (see `Judge` for the batch behaviour).

    api: "converse" (works for every chat model) or "invoke" (InvokeModel with the Anthropic messages
    body; Anthropic models only). timeout_s bounds each call from its submission, queue and retries
    included: the batch gives up on a call at its deadline, no attempt is sent after it, and
    botocore's read timeout (= timeout_s) bounds the read in flight. retry_mode: botocore's
    ("standard" by default). endpoint_url points the real client at another server (tests, VPC endpoints).
    """

    def __init__(self, rubric: str | Rubric | Mapping[str, Any] = "toxicity", model_id: str = DEFAULT_MODEL,
                 region: str = "us-east-1", api: str = "converse", temperature: float = 0.0, top_p: float = 1.0,
                 max_tokens: int = 300, max_workers: int = 16, timeout_s: float = 30, max_attempts: int = 5,
                 on_unparsed: str = "worst", max_failed_steps: int = 3, cache: bool = True,
                 endpoint_url: str | None = None, retry_mode: str = "standard", name: str | None = None,
                 prices: Mapping[str, Any] | None = None) -> None:
        options = dict(rubric=rubric, model_id=model_id, region=region, api=api, temperature=temperature,
                       top_p=top_p, max_tokens=max_tokens, max_workers=max_workers, timeout_s=timeout_s,
                       max_attempts=max_attempts, on_unparsed=on_unparsed, max_failed_steps=max_failed_steps,
                       cache=cache, endpoint_url=endpoint_url, retry_mode=retry_mode, prices=prices)
        if name is not None:
            options["name"] = name
        raise_for_problems("bedrock_judge", options)
        super().__init__(rubric=rubric, model_id=model_id, name=name or "bedrock_judge", temperature=temperature,
                         top_p=top_p, max_tokens=max_tokens, max_workers=max_workers, timeout_s=timeout_s,
                         max_attempts=max_attempts, on_unparsed=on_unparsed, max_failed_steps=max_failed_steps,
                         cache=cache, prices=prices)
        self.region = region
        self.api = api
        self.endpoint_url = endpoint_url
        self.retry_mode = retry_mode
        self._attempts = threading.local()  # requests sent by the current thread's call (retries + 1)
        self._client = self._make_client()

    def _make_client(self) -> Any:
        import boto3  # heavy: imported only when a Bedrock judge is built
        from botocore.config import Config

        _install_log_redaction()
        session = boto3.session.Session(region_name=self.region)
        self._session = session  # read again only to mask the credentials' values in error messages
        if session.get_credentials() is None:
            raise ValueError("no AWS credentials found: set them in the standard AWS chain (AWS_PROFILE or "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, SSO, or an instance "
                             "role); they are never passed to the judge")
        config = Config(
            region_name=self.region,
            # total_max_attempts counts the first request too (botocore's "max_attempts" counts retries
            # only), so max_attempts means the same here as in the OpenAI-compatible judge.
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
            read_timeout=self.timeout_s,
            connect_timeout=min(self.timeout_s, 10.0),
            max_pool_connections=max(10, self.max_workers),  # one pooled connection per worker thread
        )
        client = session.client("bedrock-runtime", endpoint_url=self.endpoint_url, config=config)
        client.meta.events.register("before-send.bedrock-runtime", self._before_send)
        # InvokeModel's body is a stream botocore hands over unread, outside its retries. Reading it in the
        # send (stream_output off) puts a reset mid-body inside the retry loop; after-call gives it back.
        client.meta.events.register("before-send.bedrock-runtime.InvokeModel", self._read_body_in_send)
        client.meta.events.register("after-call.bedrock-runtime.InvokeModel", self._body_from_send)
        return client

    def _before_send(self, **kwargs: Any) -> None:
        """Runs before every HTTP attempt: stop a call the batch gave up on, else count the attempt."""
        # The worker checks its own deadline too: a retry after it is never sent, whether or not the batch
        # thread has marked the call abandoned yet.
        if self._cancelled().is_set() or time.monotonic() >= self._deadline():
            raise _Abandoned("deadline passed; not retrying")  # not sent: not an attempt, not a retry
        self._attempts.n = getattr(self._attempts, "n", 0) + 1

    @staticmethod
    def _read_body_in_send(request: Any, **kwargs: Any) -> None:
        request.stream_output = False

    @staticmethod
    def _body_from_send(http_response: Any, parsed: dict[str, Any], **kwargs: Any) -> None:
        from botocore.response import StreamingBody

        if http_response.status_code < 300:
            content = http_response.content  # read by the send, inside the retries
            parsed["body"] = StreamingBody(io.BytesIO(content), len(content))

    def _secrets(self) -> list[str]:
        creds = self._session.get_credentials()
        if creds is None:
            return []
        frozen = creds.get_frozen_credentials()
        return [frozen.access_key, frozen.secret_key, frozen.token]

    def _repr_fields(self) -> dict[str, Any]:
        return {"api": self.api, "region": self.region, "endpoint_url": self.endpoint_url,
                "retry_mode": self.retry_mode}

    def _call_one(self, text: str) -> JudgeReply:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        self._attempts.n = 0
        try:
            if self.api == "converse":
                return self._converse(text)
            return self._invoke(text)
        except ClientError as e:  # an error response, after botocore's retries
            meta = e.response.get("ResponseMetadata", {})
            err = e.response.get("Error", {})
            code, status = err.get("Code", "ClientError"), int(meta.get("HTTPStatusCode") or 0)
            retries = int(meta.get("RetryAttempts", self._retries_so_far()))
            message = f"HTTP {status} {code}: {err.get('Message', '')}"
            if code in AUTH_ERROR_CODES or status in (401, 403):
                raise JudgeAuthError(message + " (check the AWS credentials, their region and the model's access "
                                               "in the Bedrock console)", retries) from None
            raise JudgeCallError(message, retries=retries) from None
        except NoCredentialsError as e:
            raise JudgeAuthError(f"{type(e).__name__}: {e}") from None
        except (BotoCoreError, _Abandoned) as e:  # timeouts, connection errors
            raise JudgeCallError(f"{type(e).__name__}: {e}", retries=self._retries_so_far(),
                                 timed_out="Timeout" in type(e).__name__) from None  # Read/ConnectTimeoutError

    def _retries_so_far(self) -> int:
        return max(getattr(self._attempts, "n", 1) - 1, 0)

    def _converse(self, text: str) -> JudgeReply:
        kwargs: dict[str, Any] = {
            "modelId": self.model_id,
            "messages": [{"role": "user", "content": [{"text": text}]}],
            "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": self.temperature, "topP": self.top_p},
        }
        if self.rubric.system:
            kwargs["system"] = [{"text": self.rubric.system}]
        resp = self._client.converse(**kwargs)
        retries = int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        try:
            blocks = resp["output"]["message"]["content"]
            # Text blocks only (reasoningContent blocks are not the answer), on separate lines: "Score: 4" and
            # "2 reasons" must not become "42".
            reply = "\n".join(b["text"] for b in blocks if isinstance(b, dict) and isinstance(b.get("text"), str))
            usage = resp.get("usage") or {}
            return JudgeReply(reply, int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0)), retries,
                              stop=_STOP.get(resp.get("stopReason"), "end"))
        except (KeyError, TypeError, ValueError) as e:
            raise JudgeCallError(f"malformed Converse response ({type(e).__name__}: {e})", retries) from None

    def _invoke(self, text: str) -> JudgeReply:
        body: dict[str, Any] = {
            "anthropic_version": ANTHROPIC_VERSION,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        }
        if self.rubric.system:
            body["system"] = self.rubric.system
        resp = self._client.invoke_model(modelId=self.model_id, body=json.dumps(body),
                                         contentType="application/json", accept="application/json")
        retries = int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        try:
            data = json.loads(resp["body"].read())
            reply = "\n".join(b["text"] for b in data["content"] if isinstance(b, dict) and b.get("type") == "text")
            usage = data.get("usage") or {}
            return JudgeReply(reply, int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), retries,
                              stop=_STOP.get(data.get("stop_reason"), "end"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
            raise JudgeCallError(f"malformed InvokeModel response ({type(e).__name__}: {e})", retries) from None

    def close(self) -> None:
        super().close()
        self._client.close()
