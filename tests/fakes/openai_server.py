"""A fake OpenAI API speaking the real wire format; used by proxy tests, benchmarks and other fakes.

POST /v1/chat/completions, /v1/completions (JSON and SSE with `stream_options.include_usage`),
/v1/embeddings (float and base64), /v1/responses (JSON and typed SSE events ending in
`response.completed`), GET /v1/models. `FakeAzureOpenAI` (azure_server.py) adds Azure's URL forms.
Every request is recorded with its headers so tests can assert which credential arrived upstream.
Usage is deterministic and deliberately not tiktoken's (words + `input_overhead`), so a test can tell
provider-reported usage from a local estimate.

Knobs are attributes (in-process tests) or request headers (any process; the proxy forwards them):
`x-fake-status` (fail with that status), `x-fake-delay-s` (before answering), `x-fake-chunk-delay-s`,
`x-fake-cut-after` (drop the connection after N content chunks).
Run alone: `python -m tests.fakes.openai_server --port 9000 [--azure] [--api-key KEY]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

DEFAULT_API_KEY = "sk-proj-REALupstreamCREDENTIAL0123456789abcdef"
REPLY_WORDS = ("Hello", " from", " the", " fake", " OpenAI", " upstream", ".")
EMBEDDING_DIMENSIONS = 8

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def words(value: Any) -> int:
    """Deterministic stand-in for a tokenizer: whitespace-separated words of every string inside
    (structural fields left out)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(words(v) for k, v in value.items() if k not in ("role", "type", "name"))
    if isinstance(value, list):
        return sum(words(v) for v in value)
    return 0


def openai_error(
    status: int, message: str, code: str | None = None, error_type: str = "invalid_request_error"
) -> web.Response:
    """An error in OpenAI's documented shape."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.json_response(body, status=status, headers={"x-request-id": "req_" + uuid.uuid4().hex})


def _sse(payload: Mapping[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload)}\n\n".encode()


@dataclasses.dataclass
class FakeOpenAI:
    """State and knobs of one fake OpenAI account; `app()` builds the aiohttp application."""

    api_key: str = DEFAULT_API_KEY
    #: Added to the prompt's word count, so reported usage never equals a tiktoken estimate.
    input_overhead: int = 7
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    #: Fail every request with (status, message).
    fail_with: tuple[int, str] | None = None
    #: Seconds before answering (headers), and between streamed chunks.
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    #: Streams: drop the connection after this many content chunks.
    cut_stream_after: int | None = None
    #: Leave `usage` out of every response (some OpenAI-compatible servers do).
    omit_usage: bool = False
    #: Streams wait on this event after their first content chunk (tests hold a stream open).
    hold: asyncio.Event | None = None
    #: Set once a held stream has sent its first content chunk.
    holding: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    requests: list[RecordedRequest] = dataclasses.field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        return app

    # -- accounting -------------------------------------------------------------------------------

    def prompt_tokens(self, payload: Mapping[str, Any], field: str = "messages") -> int:
        """What this fake reports as prompt tokens for a request body."""
        return words(payload.get(field)) + words(payload.get("instructions")) + self.input_overhead

    def reply(self, cap: Any) -> tuple[str, ...]:
        """The reply pieces (one "token" each), cut to `cap`."""
        return REPLY_WORDS[:cap] if isinstance(cap, int) else REPLY_WORDS

    def chat_usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0},
        }

    # -- request intake ---------------------------------------------------------------------------

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def admit(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Record, authenticate, apply failure knobs, parse; (payload, None) or (None, refusal)."""
        body = await request.read()
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={name.lower(): value for name, value in request.headers.items()},
                body=body,
            )
        )
        delay = float(request.headers.get("x-fake-delay-s", self.delay_s))
        if delay:
            await asyncio.sleep(delay)
        if not self.authorised(request):
            given = request.headers.get("Authorization", "") or request.headers.get("api-key", "")
            shown = given[-4:] if len(given) > 8 else "****"
            return None, openai_error(
                401,
                f"Incorrect API key provided: sk-...{shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_api_key",
            )
        status = request.headers.get("x-fake-status")
        fail = (int(status), f"fake failure {status}") if status else self.fail_with
        if fail is not None:
            return None, openai_error(
                fail[0],
                fail[1],
                "fake_failure",
                "server_error" if fail[0] >= 500 else "invalid_request_error",
            )
        try:
            payload = json.loads(body)
        except ValueError:
            return None, openai_error(400, "We could not parse the JSON body of your request.")
        if isinstance(payload, dict) and not payload.get("model") and self.model_from_path(request):
            payload["model"] = self.model_from_path(request)
        if not isinstance(payload, dict) or not payload.get("model"):
            return None, openai_error(400, "you must provide a model parameter", "missing_required_parameter")
        return payload, None

    def model_from_path(self, request: web.Request) -> str | None:
        """The model a URL names (Azure deployments); None for OpenAI's routes."""
        return None

    def stream_preamble(self) -> list[dict[str, Any]]:
        """Chunks sent before a chat stream's first real chunk (Azure's content-filter results)."""
        return []

    def _cut_after(self, request: web.Request) -> int | None:
        given = request.headers.get("x-fake-cut-after")
        return int(given) if given is not None else self.cut_stream_after

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": "req_" + uuid.uuid4().hex,
                "openai-organization": "org-REALACCOUNT",
                "x-ratelimit-limit-requests": "10000",
                "x-ratelimit-remaining-requests": "9999",
            }
        )
        await resp.prepare(request)
        return resp

    async def _pace(self, request: web.Request, sent: int) -> None:
        delay = float(request.headers.get("x-fake-chunk-delay-s", self.chunk_delay_s))
        if delay:
            await asyncio.sleep(delay)
        if sent == 1 and self.hold is not None:
            self.holding.set()
            await self.hold.wait()

    def _headers(self) -> dict[str, str]:
        return {
            "x-request-id": "req_" + uuid.uuid4().hex,
            "openai-organization": "org-REALACCOUNT",
            "openai-processing-ms": "3",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
        }

    # -- endpoints --------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, chat: bool) -> web.StreamResponse:
        payload, refusal = await self.admit(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        cap = payload.get("max_completion_tokens") or payload.get("max_tokens")
        pieces = self.reply(cap)
        finish = "stop" if len(pieces) == len(REPLY_WORDS) else "length"
        prompt = self.prompt_tokens(payload, "messages" if chat else "prompt")
        usage = None if self.omit_usage else self.chat_usage(prompt, len(pieces))
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = {
            "id": ident,
            "created": int(time.time()),
            "model": payload["model"],
            "system_fingerprint": "fp_fake",
        }
        if not payload.get("stream"):
            text = "".join(pieces)
            choice = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                if chat
                else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            )
            body = {**head, "object": "chat.completion" if chat else "text_completion", "choices": [choice]}
            if usage is not None:
                body["usage"] = usage
            return web.json_response(body, headers=self._headers())
        head["object"] = "chat.completion.chunk" if chat else "text_completion"
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        resp = await self._open_stream(request)
        cut = self._cut_after(request)
        if chat:
            for preamble in self.stream_preamble():
                await resp.write(_sse(preamble))
            await resp.write(
                _sse(
                    {
                        **head,
                        "choices": [
                            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        ],
                    }
                )
            )
        for sent, piece in enumerate(pieces):
            if sent == cut:
                return _abort(request, resp)
            choice = (
                {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            chunk = {**head, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            await resp.write(_sse(chunk))
            await self._pace(request, sent + 1)
        last = (
            {"index": 0, "delta": {}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": "", "finish_reason": finish}
        )
        await resp.write(_sse({**head, "choices": [last], **({"usage": None} if include_usage else {})}))
        if include_usage and usage is not None:
            await resp.write(_sse({**head, "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        payload, refusal = await self.admit(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        raw = payload.get("input")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index in range(len(inputs)):
            vector = [float((index + 1) * (d + 1)) / 10 for d in range(EMBEDDING_DIMENSIONS)]
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt = words(raw) + self.input_overhead
        body: dict[str, Any] = {"object": "list", "data": data, "model": payload["model"]}
        if not self.omit_usage:
            body["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return web.json_response(body, headers=self._headers())

    def _response_object(
        self, payload: Mapping[str, Any], pieces: tuple[str, ...], status: str
    ) -> dict[str, Any]:
        text = "".join(pieces)
        prompt = self.prompt_tokens(payload, "input")
        output = (
            [
                {
                    "type": "message",
                    "id": "msg_fake",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
            if status != "in_progress"
            else []
        )
        usage = None
        if status != "in_progress" and not self.omit_usage:
            usage = {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": len(pieces),
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": prompt + len(pieces),
            }
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": payload.get("instructions"),
            "model": payload["model"],
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        payload, refusal = await self.admit(request)
        if refusal is not None:
            return refusal
        assert payload is not None
        pieces = self.reply(payload.get("max_output_tokens"))
        if not payload.get("stream"):
            return web.json_response(
                self._response_object(payload, pieces, "completed"), headers=self._headers()
            )
        resp = await self._open_stream(request)
        sequence = 0

        async def send(kind: str, body: dict[str, Any]) -> None:
            nonlocal sequence
            await resp.write(_sse({"type": kind, "sequence_number": sequence, **body}, kind))
            sequence += 1

        started = self._response_object(payload, (), "in_progress")
        await send("response.created", {"response": started})
        await send("response.in_progress", {"response": started})
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        await send("response.output_item.added", {"output_index": 0, "item": item})
        at = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        await send(
            "response.content_part.added",
            {**at, "part": {"type": "output_text", "text": "", "annotations": []}},
        )
        cut = self._cut_after(request)
        for sent, piece in enumerate(pieces):
            if sent == cut:
                return _abort(request, resp)
            await send("response.output_text.delta", {**at, "delta": piece, "logprobs": []})
            await self._pace(request, sent + 1)
        text = "".join(pieces)
        await send("response.output_text.done", {**at, "text": text, "logprobs": []})
        await send(
            "response.content_part.done",
            {**at, "part": {"type": "output_text", "text": text, "annotations": []}},
        )
        done = self._response_object(payload, pieces, "completed")
        await send("response.output_item.done", {"output_index": 0, "item": done["output"][0]})
        await send("response.completed", {"response": done})
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not self.authorised(request):
            return openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})


def _abort(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Drop the TCP connection mid-response, as a crashed upstream or broken network would."""
    if request.transport is not None:
        request.transport.abort()
    return resp


def main(argv: list[str] | None = None) -> None:
    """Serve a fake (OpenAI, or Azure with --azure) on 127.0.0.1 until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument(
        "--azure", action="store_true", help="serve Azure OpenAI's URL forms (api-key header)"
    )
    args = parser.parse_args(argv)
    fake: FakeOpenAI
    if args.azure:
        from tests.fakes import azure_server

        fake = azure_server.FakeAzureOpenAI(api_key=args.api_key)
    else:
        fake = FakeOpenAI(api_key=args.api_key)
    # Recording would grow without bound in a long-lived process.
    fake.requests = _Discard()
    web.run_app(
        fake.app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda text: print(text, flush=True),
    )


class _Discard(list[RecordedRequest]):
    def append(self, item: RecordedRequest) -> None:
        return None


if __name__ == "__main__":
    main()
