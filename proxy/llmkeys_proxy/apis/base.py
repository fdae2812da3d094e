"""What every wire format shares: the `WireFormat` / `WireFamily` interfaces, the `Endpoint` a route
means, prompt counting, JSON field readers, and the stream meter skeleton.

A wire format is what the caller speaks (OpenAI chat, Anthropic messages, Gemini, Bedrock converse,
...); a family (openai, anthropic, gemini, bedrock) is the error and model-list shape its SDK
expects. Each family module (`apis.openai`, `apis.anthropic`, `apis.gemini`, `apis.bedrock`)
subclasses these and contributes its route rows; `apis/__init__.py` is the registry. The pipeline
holds an `Endpoint` and calls `endpoint.wire.<method>`: it never names a format. Where the request
goes (URL, credential, signature) is `providers/`, which knows nothing of usage or errors.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

import orjson
from aiohttp import web

from llmkeys_proxy import config, errors, sse, tokens

ApiFormat = Literal[
    "openai-chat",
    "openai-completions",
    "openai-embeddings",
    "openai-responses",
    "anthropic-messages",
    "gemini",
    "bedrock-converse",
    "bedrock-invoke",
]
ApiFamily = Literal["openai", "anthropic", "gemini", "bedrock"]

# Rough allowances for request parts tiktoken cannot count. Reservations only need the right order
# of magnitude; settlement replaces them with the provider's reported usage.
#: An image, audio clip, video or file part: OpenAI charges 85..~1,100 tokens per image, Anthropic up
#: to ~1,600, Gemini 258 per image; PDFs and audio can be more (underestimates are settled later).
NON_TEXT_PART_TOKENS = 1024
#: Per-message framing of chat formats (OpenAI cookbook: 3 per message, 3 to prime the reply).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

#: Raw response bytes kept for a possible fallback count before they are folded into a token count.
_KEEP_BYTES = 1 << 20
#: An unterminated SSE event larger than this means the body is not SSE (or is hostile): parsing
#: stops and bytes pass through untouched, so memory stays bounded.
MAX_SSE_EVENT_BYTES = 4 << 20
#: Bytes of a provider's error message repeated to the client on a 5xx.
_UPSTREAM_MESSAGE_LIMIT = 300


# --------------------------------------------------------------------------------------------------
# JSON field readers


def int_of(value: object) -> int | None:
    """A non-negative integer from JSON (bools are not numbers here); floats like 100.0 are accepted."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


#: Most tokens one response may report in one field: more than any model reads or writes. Above it a
#: report is absurd (and would overflow the limiter's int64 counters).
MAX_REPORTED_TOKENS = 1_000_000_000
#: What `count_of` gives a reported value that is not a count: negative, non-numeric or absurd. Far
#: enough below zero that sums of fields stay negative, so `TokenCounts.plausible` catches them.
INVALID_COUNT = -(2**62)


def count_of(value: object) -> int:
    """A reported token count: 0 when absent (null), `INVALID_COUNT` when present but not a count
    (negative, a string, a bool, a fraction, above `MAX_REPORTED_TOKENS`): such usage is never
    charged as reported (the pipeline counts the request itself and logs it)."""
    if value is None:
        return 0
    count = int_of(value)
    if count is None or count > MAX_REPORTED_TOKENS:
        return INVALID_COUNT
    return count


def get(body: Mapping[str, Any], *path: str) -> object:
    value: object = body
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def first_int(body: Mapping[str, Any], *paths: tuple[str, ...]) -> int | None:
    for path in paths:
        value = int_of(get(body, *path))
        if value is not None:
            return value
    return None


def choices(body: Mapping[str, Any], *keys: str) -> int:
    """Number of completions asked for (n / best_of / candidateCount): each is billed."""
    best = 1
    for key in keys:
        value = int_of(get(body, *key.split(".")))
        if value is not None and value > best:
            best = value
    return best


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def input_excluding_cache(
    input_tokens: Any, cache_read: Any, cache_write: Any, output: Any
) -> tokens.TokenCounts:
    """Counts of the providers whose input excludes cache reads and writes (Anthropic, Bedrock):
    both are added back, so `input_tokens` means all input everywhere."""
    read, write = count_of(cache_read), count_of(cache_write)
    return tokens.TokenCounts(
        input_tokens=count_of(input_tokens) + read + write,
        cached_input_tokens=read,
        cache_write_tokens=write,
        output_tokens=count_of(output),
    )


def append_text(texts: list[str], value: object) -> None:
    """A generated string as is; a structured value (tool arguments, ...) as its JSON text."""
    if isinstance(value, str) and value:
        texts.append(value)
    elif isinstance(value, dict | list) and value:
        texts.append(orjson.dumps(value).decode())


# --------------------------------------------------------------------------------------------------
# Prompt counting


class PromptCounter:
    """Accumulates text (counted in one tiktoken call) and fixed allowances for one request."""

    __slots__ = ("fixed", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed = 0

    def text(self, value: object) -> None:
        if isinstance(value, str):
            if value:
                self.texts.append(value)
        elif value is not None:
            # Tool schemas, function arguments, structured payloads: their JSON text is a fair proxy.
            try:
                self.texts.append(orjson.dumps(value, default=str).decode())
            except orjson.JSONEncodeError:  # nested deeper than orjson writes: count its strings
                self.all_strings(value)

    def all_strings(self, value: object) -> None:
        """Unknown body shapes: every string value counts (keys and numbers do not). Iterative, so a
        hostile nesting depth cannot exhaust the stack."""
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                self.text(item)
            elif isinstance(item, Mapping):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)

    def total(self, model: str) -> int:
        if not self.texts:
            return self.fixed
        encode = tokens.encoding_for_model(model).encode_ordinary
        # Each value separately, as the cookbook recipe does: joining would merge tokens at the seams.
        return self.fixed + sum(len(encode(text)) for text in self.texts)


# --------------------------------------------------------------------------------------------------
# Stream meters


class StreamMeter:
    """Tees one streamed response: forwards its bytes and captures the usage it reports.

    The base reads SSE: whole events are cut from each read (a partial one is carried to the next)
    and handed to `_block`, which each format implements with cheap substring tests before any
    JSON parsing. `hide_usage_chunk` (OpenAI chat/completions): the proxy injected
    `stream_options.include_usage`, and the usage-only chunk is dropped from what the client
    receives; partial events are then held back until complete, so `feed` may return fewer (or
    more) bytes than it was given, and `finish` returns the rest. Hot path: bytes are forwarded
    untouched (the same object); text for the fallback count is extracted only when asked for.
    """

    #: Kept raw data are SSE blocks (False: one JSON document per kept item).
    _kept_sse: bool = True

    def __init__(self, model: str, *, hide_usage_chunk: bool = False) -> None:
        self.model = model
        self._hide = hide_usage_chunk
        self._carry = b""
        self._complete = False
        self._final = False
        self._error = False
        self._usage: tokens.TokenCounts | None = None
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._folded_output_tokens = 0
        self._finished = False
        self._passthrough = False

    # -- what the pipeline reads ----------------------------------------------------------------

    @property
    def usage(self) -> tokens.TokenCounts | None:
        """Provider-reported usage seen so far (final once the stream is complete)."""
        return self._usage

    @property
    def complete(self) -> bool:
        """The stream reached its proper end ([DONE], message_stop, response.completed, ...)."""
        return self._complete

    @property
    def error(self) -> bool:
        """The provider reported an error inside the stream (after HTTP 200)."""
        return self._error

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward to the client for this upstream chunk (the same object when unchanged)."""
        if not chunk or self._passthrough:
            return chunk
        data = self._carry + chunk if self._carry else chunk
        # Fast path: upstreams flush whole events, so a read usually ends on a boundary.
        cut = len(data) if data.endswith(b"\n\n") or data.endswith(b"\n\r\n") else sse.last_event_end(data)
        if cut < 0:
            if len(data) > MAX_SSE_EVENT_BYTES:
                self._passthrough = True
                self._carry = b""
                return data if self._hide else chunk
            self._carry = data
            return b"" if self._hide else chunk
        if cut == len(data):
            block, self._carry = data, b""
        else:
            block, self._carry = data[:cut], data[cut:]
        out = self._block(block, False)
        if not self._hide:
            return chunk
        return chunk if out is chunk else out

    def finish(self) -> bytes:
        """End of the upstream stream: process what was held back and return it for the client."""
        if self._finished:
            return b""
        self._finished = True
        tail, self._carry = self._carry, b""
        if not tail:
            return b""
        out = self._block(tail, True)
        return out if self._hide else b""

    def fallback_counts(self, prompt_tokens: int) -> tokens.TokenCounts:
        """Usage of a stream cut off before its final usage: provider-reported parts where known
        (e.g. Anthropic's message_start input), else `prompt_tokens`; output counted with tiktoken
        from the text that passed (reasoning the provider never streamed cannot be seen)."""
        self._folded_output_tokens += self._count_kept()
        counted = self._folded_output_tokens
        reported = self.usage
        if reported is None:
            return tokens.TokenCounts(input_tokens=prompt_tokens, output_tokens=counted)
        return tokens.TokenCounts(
            input_tokens=reported.input_tokens or prompt_tokens,
            cached_input_tokens=reported.cached_input_tokens,
            cache_write_tokens=reported.cache_write_tokens,
            output_tokens=max(reported.output_tokens, counted),
            reasoning_tokens=reported.reasoning_tokens,
        )

    def settled_counts(self, prompt_tokens: int) -> tokens.TokenCounts:
        """What to charge: the provider's final usage when it arrived, else `fallback_counts`."""
        usage = self.usage
        if usage is not None and (self._final or self._complete):
            return usage
        return self.fallback_counts(prompt_tokens)

    # -- what each format implements ------------------------------------------------------------

    @abc.abstractmethod
    def _block(self, block: bytes, flush: bool) -> bytes:
        """Account a block of whole SSE events (`flush`: the unterminated end of the stream);
        returns the block, or a copy without an event the client must not see."""

    @abc.abstractmethod
    def collect_text(self, payload: Mapping[str, Any], texts: list[str]) -> None:
        """Generated text (incl. visible reasoning and tool-call arguments) of one streamed event."""

    # -- shared by the formats ------------------------------------------------------------------

    def _keep(self, data: bytes) -> None:
        self._kept.append(data)
        self._kept_size += len(data)
        if self._kept_size > _KEEP_BYTES:
            self._folded_output_tokens += self._count_kept()

    def _count_kept(self) -> int:
        if not self._kept:
            return 0
        kept, self._kept, self._kept_size = self._kept, [], 0
        texts: list[str] = []
        if self._kept_sse:
            for block in kept:
                for event in sse.raw_events(block, flush=True):
                    payload = loads(event.data)
                    if isinstance(payload, dict):
                        self.collect_text(payload, texts)
        else:
            for item in kept:  # one JSON document each
                payload = loads(item)
                if isinstance(payload, dict):
                    self.collect_text(payload, texts)
        if not texts:
            return 0
        # Streamed pieces are one contiguous output: tokenise them together, as the model did.
        return tokens.count_tokens(self.model, "".join(texts))


# --------------------------------------------------------------------------------------------------
# Formats and families


class WireFamily(abc.ABC):
    """An SDK family's shapes: the error body and headers it understands, and its model list."""

    name: ClassVar[ApiFamily]

    @abc.abstractmethod
    def error_body(self, error: errors.ProxyError) -> bytes:
        """The JSON body for `error` in this family's shape."""

    def error_headers(self, error: errors.ProxyError) -> Mapping[str, str]:
        """Headers the family's SDK reads the error from (beyond the body)."""
        return {}

    def error_response(self, error: errors.ProxyError) -> web.Response:
        """A complete JSON error response (status, body and the error's extra headers)."""
        response = web.Response(
            status=error.status, body=self.error_body(error), content_type="application/json"
        )
        if error.headers:
            response.headers.update(error.headers)
        response.headers.update(self.error_headers(error))
        return response

    def model_list(self, listed: list[tuple[str, config.ProviderEntry]]) -> object:
        """GET /models: the models a key may use, in this family's list shape."""
        raise NotImplementedError(f"the {self.name} family serves no model list")

    def model_object(self, model: str, provider: config.ProviderEntry) -> object:
        """GET /models/{model}: one model in this family's shape."""
        raise NotImplementedError(f"the {self.name} family serves no model list")


class WireFormat(abc.ABC):
    """Everything the proxy knows about one request format: the fields it reads and writes, prompt
    counting, usage extraction, the stream meter, and its family's error shape."""

    name: ClassVar[ApiFormat]
    family: ClassVar[WireFamily]
    #: Operations that cost nothing upstream (token counting): charged as no tokens.
    free_operations: ClassVar[frozenset[str]] = frozenset()
    #: The body's `model` is what the upstream routes by: rewritten to the upstream model name.
    model_in_body: ClassVar[bool] = False
    #: Where the output cap is written when a request names none (the key's maxTokensPerRequest).
    output_cap_field: ClassVar[str | None] = None
    #: Streams report usage only when asked (`stream_options.include_usage`).
    asks_for_stream_usage: ClassVar[bool] = False

    @abc.abstractmethod
    def count_prompt(self, counter: PromptCounter, body: Mapping[str, Any]) -> None:
        """Add the request's prompt parts to `counter`."""

    @abc.abstractmethod
    def requested_output_tokens(self, body: Mapping[str, Any]) -> int | None:
        """The output cap the request asks for (times the number of completions asked for), or None
        when it names none (the caller then reserves the key's default)."""

    @abc.abstractmethod
    def usage_of(self, payload: Mapping[str, Any]) -> tokens.TokenCounts | None:
        """Provider-reported usage of a non-streamed response body, or None when it carries none."""

    @abc.abstractmethod
    def meter(self, model: str, hide_usage_chunk: bool) -> StreamMeter:
        """A fresh meter for one streamed response."""

    def estimate_prompt_tokens(self, model: str, body: Mapping[str, Any]) -> int:
        """Estimated input tokens of a request body, for the reservation made before forwarding.

        Text is counted with tiktoken (exact for OpenAI models, an approximation for Claude/Gemini);
        chat formats add the cookbook framing (3 per message, +1 per `name`, +3 reply priming); tool
        schemas and structured arguments count as their JSON text; each image/audio/file part counts
        `NON_TEXT_PART_TOKENS`.
        """
        counter = PromptCounter()
        self.count_prompt(counter, body)
        return counter.total(model)

    def response_usage(
        self, operation: str, headers: Mapping[str, str], body: bytes
    ) -> tokens.TokenCounts | None:
        """Reported usage of a non-streamed 2xx response (None when it carries none)."""
        if operation in self.free_operations:
            return tokens.TokenCounts(input_tokens=0)
        payload = loads(body)
        return self.usage_of(payload) if isinstance(payload, dict) else None

    def output_text(self, payload: Mapping[str, Any]) -> Iterable[str]:
        """Generated text of a non-streamed response that reported no usage (for a tiktoken count)."""
        return ()

    def upstream_body(
        self,
        stream: bool,
        payload: dict[str, Any],
        body: bytes,
        upstream_model: str,
        injects_stream_usage: bool,
        output_cap: int | None = None,
    ) -> tuple[bytes, dict[str, Any], bool]:
        """(bytes to send, payload they encode, whether to hide the injected usage chunk). The original
        bytes unless the model must be renamed, a streamed request must ask for usage, or a request
        without an output cap must get the key's (`output_cap`: only passed when it names none)."""
        changes: dict[str, Any] = {}
        if self.model_in_body and payload.get("model") != upstream_model:
            changes["model"] = upstream_model
        if output_cap is not None and self.output_cap_field is not None:
            changes[self.output_cap_field] = output_cap
        hide = False
        if stream and injects_stream_usage and self.asks_for_stream_usage:
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                changes["stream_options"] = (
                    {**options, "include_usage": True}
                    if isinstance(options, dict)
                    else {"include_usage": True}
                )
                hide = True
        if not changes:
            return body, payload, False
        rewritten = {**payload, **changes}
        return orjson.dumps(rewritten), rewritten, hide


def upstream_error_message(data: bytes) -> str:
    """The message of an upstream error body, cut short: `{"error": {"message"}}` (OpenAI, Anthropic,
    Google) or `{"message"}` (AWS)."""
    payload = loads(data)
    error = payload.get("error") if isinstance(payload, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = payload.get("message") if isinstance(payload, dict) else None
    return message[:_UPSTREAM_MESSAGE_LIMIT] if isinstance(message, str) else ""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """What an inbound route means to the pipeline."""

    wire: WireFormat
    #: See `providers.base.UpstreamCall.operation`.
    operation: str
    #: Streamed whatever the body says (Gemini streamGenerateContent, Bedrock converse-stream);
    #: None: the body's `stream` field decides.
    stream: bool | None = None

    @property
    def api(self) -> ApiFormat:
        return self.wire.name

    @property
    def family(self) -> WireFamily:
        return self.wire.family


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRow:
    """One proxied route: method, aiohttp path, endpoint meaning, and where the model comes from."""

    method: str
    path: str
    endpoint: Endpoint
    #: match_info name holding the model (None: the body's `model`).
    model_param: str | None = None
    #: The path names an Azure deployment: map it back to a model name.
    azure_deployment: bool = False
