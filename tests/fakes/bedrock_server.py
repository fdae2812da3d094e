"""A fake Amazon Bedrock Runtime speaking the real wire formats; used by the provider integration tests.

POST /model/{modelId}/converse, /converse-stream, /invoke, /invoke-with-response-stream,
/count-tokens. Streams are
`application/vnd.amazon.eventstream` frames with correct CRC32s (`encoders.event_message`). Authentication
is either a Bedrock API key (`Authorization: Bearer`) or SigV4, verified with botocore's own signer
(so the proxy's signer is checked by an independent implementation). InvokeModel speaks Claude's
Messages format (`anthropic_version: bedrock-2023-05-31`) and reports usage in the
X-Amzn-Bedrock-*-Token-Count headers; its stream's last chunk carries
`amazon-bedrock-invocationMetrics`. Errors are `{"message": ...}` with `x-amzn-ErrorType`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import urllib.parse
import uuid
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
from aiohttp import web
from tests.fakes import anthropic_server, encoders

REPLY_PIECES = ("Hello", " from", " the", " fake", " Bedrock", ".")
EVENTSTREAM = "application/vnd.amazon.eventstream"


def event_frame(event_type: str, body: dict[str, Any]) -> bytes:
    """An `event` message as Bedrock sends them (JSON payload with a `p` padding field)."""
    padded = {**body, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"[: 5 + len(event_type)]}
    return encoders.event_message(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(padded, separators=(",", ":")).encode(),
    )


def exception_frame(exception_type: str, message: str) -> bytes:
    """An in-stream `exception` message (e.g. throttlingException after HTTP 200)."""
    return encoders.event_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )


def bedrock_error(status: int, error_type: str, message: str) -> web.Response:
    """A Bedrock error: `{"message"}` body, the exception name in `x-amzn-ErrorType`."""
    return web.json_response(
        {"message": message},
        status=status,
        headers={"x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


@dataclasses.dataclass
class FakeBedrock:
    """One fake AWS account. Authentication: `api_key` as Bearer, or SigV4 with the access key pair."""

    region: str = "us-east-1"
    api_key: str | None = "ABSK-fake-bedrock-api-key-real-credential"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: Added to the word count of the prompt so reported usage never equals a tiktoken estimate.
    input_overhead: int = 9
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    #: (status, exception name, message): fail every request with it.
    fail_with: tuple[int, str, str] | None = None
    #: Streams: drop the connection after this many content events (no metadata / metrics).
    cut_stream_after_deltas: int | None = None
    #: Streams: send a throttlingException frame after this many content events.
    exception_after_deltas: int | None = None
    requests: list[anthropic_server.RecordedRequest] = dataclasses.field(default_factory=list)
    #: SigV4 verification results, one per signed request ("ok" or why it failed).
    signature_checks: list[str] = dataclasses.field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/model/{model_id}/{operation}", self._handle)
        return app

    # ----------------------------------------------------------------------------------- auth

    def _check_signature(self, request: web.Request, body: bytes) -> str:
        auth = request.headers.get("Authorization", "")
        fields = dict(
            part.strip().split("=", 1)
            for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(",")
            if "=" in part
        )
        credential = fields.get("Credential", "").split("/")
        if len(credential) != 5 or credential[0] != self.access_key_id:
            return "unknown access key"
        if credential[2:] != [self.region, "bedrock", "aws4_request"]:
            return "wrong scope"
        if (
            self.session_token is not None
            and request.headers.get("X-Amz-Security-Token") != self.session_token
        ):
            return "missing or wrong session token"
        signed = fields.get("SignedHeaders", "").split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return "host and x-amz-date must be signed"
        aws_request = botocore.awsrequest.AWSRequest(
            method=request.method,
            url=f"http://{request.host}{request.raw_path}",
            headers={name: request.headers[name] for name in signed if name in request.headers},
            data=body,
        )
        timestamp = request.headers.get("X-Amz-Date", "")
        aws_request.context["timestamp"] = timestamp
        signer = botocore.auth.SigV4Auth(
            botocore.credentials.Credentials(self.access_key_id, self.secret_access_key, self.session_token),
            "bedrock",
            self.region,
        )
        canonical = signer.canonical_request(aws_request)
        expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
        return "ok" if expected == fields.get("Signature") else "signature mismatch"

    def _authenticate(self, request: web.Request, body: bytes) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            if self.api_key is not None and auth == f"Bearer {self.api_key}":
                return None
            return bedrock_error(
                403, "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        if auth.startswith("AWS4-HMAC-SHA256 ") and self.access_key_id:
            result = self._check_signature(request, body)
            self.signature_checks.append(result)
            if result == "ok":
                return None
            return bedrock_error(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return bedrock_error(403, "AccessDeniedException", "Missing Authentication Token")

    # ----------------------------------------------------------------------------- operations

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(anthropic_server.record(request, body))
        refusal = self._authenticate(request, body)
        if refusal is not None:
            return refusal
        if self.fail_with is not None:
            return bedrock_error(*self.fail_with)
        try:
            payload = json.loads(body)
        except ValueError:
            return bedrock_error(
                400, "ValidationException", "Malformed input request, please reformat your input."
            )
        model_id = urllib.parse.unquote(request.match_info["model_id"])
        operation = request.match_info["operation"]
        if operation == "converse":
            return self._converse(payload)
        if operation == "converse-stream":
            return await self._converse_stream(request, payload)
        if operation == "invoke":
            return self._invoke(model_id, payload)
        if operation == "invoke-with-response-stream":
            return await self._invoke_stream(request, model_id, payload)
        if operation == "count-tokens":
            converse = (payload.get("input") or {}).get("converse")
            if converse is None:
                invoke_body = json.loads(
                    ((payload.get("input") or {}).get("invokeModel") or {}).get("body", "{}")
                )
                return web.json_response({"inputTokens": self.input_tokens(invoke_body)})
            return web.json_response({"inputTokens": self.input_tokens(converse)})
        return bedrock_error(404, "UnknownOperationException", f"Unknown operation {operation}")

    def input_tokens(self, payload: dict[str, Any]) -> int:
        """Uncached input tokens this fake reports (Converse and Claude bodies alike)."""
        return (
            anthropic_server.word_tokens(payload.get("messages"))
            + anthropic_server.word_tokens(payload.get("system"))
            + self.input_overhead
        )

    def output_tokens(self, payload: dict[str, Any]) -> int:
        cap = (payload.get("inferenceConfig") or {}).get("maxTokens") or payload.get("max_tokens")
        return min(len(REPLY_PIECES), int(cap or len(REPLY_PIECES)))

    def _converse_usage(self, payload: dict[str, Any], output: int) -> dict[str, int]:
        inputs = self.input_tokens(payload)
        total = inputs + output + self.cache_read_input_tokens + self.cache_write_input_tokens
        usage = {"inputTokens": inputs, "outputTokens": output, "totalTokens": total}
        if self.cache_read_input_tokens or self.cache_write_input_tokens:
            usage["cacheReadInputTokens"] = self.cache_read_input_tokens
            usage["cacheWriteInputTokens"] = self.cache_write_input_tokens
        return usage

    def _stop_reason(self, payload: dict[str, Any]) -> str:
        return "end_turn" if self.output_tokens(payload) == len(REPLY_PIECES) else "max_tokens"

    def _converse(self, payload: dict[str, Any]) -> web.Response:
        output = self.output_tokens(payload)
        return web.json_response(
            {
                "output": {
                    "message": {"role": "assistant", "content": [{"text": "".join(REPLY_PIECES[:output])}]}
                },
                "stopReason": self._stop_reason(payload),
                "usage": self._converse_usage(payload, output),
                "metrics": {"latencyMs": 42},
            },
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def _open_stream(
        self, request: web.Request, extra: dict[str, str] | None = None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": EVENTSTREAM, "x-amzn-RequestId": str(uuid.uuid4()), **(extra or {})}
        )
        await resp.prepare(request)
        return resp

    async def _converse_stream(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        resp = await self._open_stream(request)
        output = self.output_tokens(payload)
        await resp.write(event_frame("messageStart", {"role": "assistant"}))
        for index, piece in enumerate(REPLY_PIECES[:output]):
            if index == self.cut_stream_after_deltas:
                return anthropic_server.cut_connection(request, resp)
            if index == self.exception_after_deltas:
                await resp.write(exception_frame("throttlingException", "Too many requests, please wait."))
                await resp.write_eof()
                return resp
            frame = event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
            # Split frames across writes: a reader must reassemble frames that span reads.
            await resp.write(frame[:7])
            await resp.write(frame[7:])
        await resp.write(
            event_frame("contentBlockStop", {"contentBlockIndex": 0})
            + event_frame("messageStop", {"stopReason": self._stop_reason(payload)})
            + event_frame(
                "metadata", {"usage": self._converse_usage(payload, output), "metrics": {"latencyMs": 42}}
            )
        )
        await resp.write_eof()
        return resp

    def _claude_usage(self, payload: dict[str, Any], output: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens(payload),
            "cache_creation_input_tokens": self.cache_write_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": output,
        }

    def _invoke(self, model_id: str, payload: dict[str, Any]) -> web.Response:
        if payload.get("anthropic_version") != "bedrock-2023-05-31":
            return bedrock_error(
                400, "ValidationException", "Malformed input request: anthropic_version is required"
            )
        output = self.output_tokens(payload)
        body = {
            "id": "msg_bdrk_" + uuid.uuid4().hex[:20],
            "type": "message",
            "role": "assistant",
            "model": model_id,
            "content": [{"type": "text", "text": "".join(REPLY_PIECES[:output])}],
            "stop_reason": self._stop_reason(payload),
            "stop_sequence": None,
            "usage": self._claude_usage(payload, output),
        }
        headers = {
            "x-amzn-RequestId": str(uuid.uuid4()),
            "X-Amzn-Bedrock-Invocation-Latency": "42",
            "X-Amzn-Bedrock-Input-Token-Count": str(self.input_tokens(payload)),
            "X-Amzn-Bedrock-Output-Token-Count": str(output),
        }
        if self.cache_read_input_tokens or self.cache_write_input_tokens:
            headers["X-Amzn-Bedrock-Cache-Read-Input-Token-Count"] = str(self.cache_read_input_tokens)
            headers["X-Amzn-Bedrock-Cache-Write-Input-Token-Count"] = str(self.cache_write_input_tokens)
        return web.json_response(body, headers=headers)

    async def _invoke_stream(
        self, request: web.Request, model_id: str, payload: dict[str, Any]
    ) -> web.StreamResponse:
        if payload.get("anthropic_version") != "bedrock-2023-05-31":
            return bedrock_error(
                400, "ValidationException", "Malformed input request: anthropic_version is required"
            )
        resp = await self._open_stream(request, {"X-Amzn-Bedrock-Content-Type": "application/json"})
        output = self.output_tokens(payload)

        async def chunk(event: dict[str, Any]) -> None:
            raw = base64.b64encode(json.dumps(event).encode()).decode()
            await resp.write(event_frame("chunk", {"bytes": raw}))

        await chunk(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_bdrk_" + uuid.uuid4().hex[:20],
                    "type": "message",
                    "role": "assistant",
                    "model": model_id,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": self._claude_usage(payload, 1),
                },
            }
        )
        await chunk(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for index, piece in enumerate(REPLY_PIECES[:output]):
            if index == self.cut_stream_after_deltas:
                return anthropic_server.cut_connection(request, resp)
            if index == self.exception_after_deltas:
                await resp.write(exception_frame("throttlingException", "Too many requests, please wait."))
                await resp.write_eof()
                return resp
            await chunk(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            )
        await chunk({"type": "content_block_stop", "index": 0})
        await chunk(
            {
                "type": "message_delta",
                "delta": {"stop_reason": self._stop_reason(payload), "stop_sequence": None},
                "usage": {"output_tokens": output},
            }
        )
        metrics = {
            "inputTokenCount": self.input_tokens(payload),
            "outputTokenCount": output,
            "invocationLatency": 42,
            "firstByteLatency": 7,
        }
        if self.cache_read_input_tokens or self.cache_write_input_tokens:
            metrics["cacheReadInputTokenCount"] = self.cache_read_input_tokens
            metrics["cacheWriteInputTokenCount"] = self.cache_write_input_tokens
        await chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics})
        await resp.write_eof()
        return resp
