"""The one interface every provider adapter implements; the request pipeline only talks to this.

The pipeline authenticates, routes, reserves, then hands an `UpstreamCall` to the adapter of the
chosen ProviderCredential and gets an `UpstreamResponse` back (status, headers, body chunks). An
adapter owns everything provider-specific on the way out: URL, real credential (header, signature
or OAuth token), body changes the provider needs and its pooled HTTP session. What the caller
speaks (fields, usage, streams, error shapes) is `apis/`, never here. Adding an upstream for an
existing format = one module with one `ProviderAdapter` subclass, named in `providers/__init__.py`
(plus its credential fields in the CRD and `config.ProviderEntry`); the pipeline stays.

`HttpAdapter` is the base for adapters that call an HTTP upstream: one pooled keep-alive
`aiohttp.ClientSession` per credential, timeouts and error mapping done once.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import io
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from llmkeys_proxy import config, errors, settings
from llmkeys_proxy.apis import base as apis_base


@dataclasses.dataclass(slots=True)
class UpstreamCall:
    """One admitted request, as the pipeline hands it to an adapter."""

    #: Wire format of the request (and of the response the client expects).
    api: apis_base.ApiFormat
    #: The inbound endpoint's operation: "chat/completions", "embeddings", "responses", ... for
    #: OpenAI; "generateContent", "streamGenerateContent", "countTokens" for Gemini; "converse",
    #: "converse-stream", "invoke", "invoke-with-response-stream" for Bedrock; "messages" for Anthropic.
    operation: str
    #: The model the client named (allowlists, audit, metrics).
    model: str
    #: The name the provider knows (route rename, Azure deployment); see `ProviderAdapter.upstream_model`.
    upstream_model: str
    stream: bool
    #: Exact bytes to send: the client's body, or a rewrite when the pipeline had to change it.
    body: bytes
    #: The parsed body (read-only; do not mutate).
    payload: Mapping[str, Any]
    #: Client headers safe to forward: no credentials, no hop-by-hop headers, no Host/Content-Length.
    headers: dict[str, str]
    #: Client query parameters without credentials (`key=`), e.g. Azure's api-version, Gemini's alt.
    query: Mapping[str, str]
    request_id: str


@dataclasses.dataclass(slots=True)
class PreparedRequest:
    """What an `HttpAdapter` sends: built by `prepare` (sign here: the body is final)."""

    method: str
    #: A `yarl.URL(..., encoded=True)` goes out byte for byte (Bedrock signs its encoded path).
    url: str | yarl.URL
    headers: dict[str, str]
    body: bytes


class UpstreamResponse(abc.ABC):
    """A provider's answer: status and headers at once, the body read whole or streamed."""

    status: int
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    #: Set when the body broke off (upstream timeout or disconnect mid-stream); never holds secrets.
    error: str | None = None

    @abc.abstractmethod
    async def read(self) -> bytes:
        """The whole body (non-streamed responses); raises `errors.ProxyError` on upstream failure."""

    @abc.abstractmethod
    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; ends early (setting `error`) if the upstream breaks off."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection (back to the pool when fully read, dropped otherwise)."""


class ProviderAdapter(abc.ABC):
    """Talks to one ProviderCredential's upstream. One instance per credential per config version
    (reused across config reloads while the credential's entry is unchanged)."""

    #: Request formats this adapter can serve (routing skips adapters that cannot).
    apis: ClassVar[frozenset[apis_base.ApiFormat]] = frozenset()
    #: Whether streamed OpenAI chat/completions calls should ask upstream for a final usage chunk
    #: (`stream_options.include_usage`); the pipeline injects it and hides the chunk from clients
    #: that did not ask for it.
    injects_stream_usage: ClassVar[bool] = False

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        self.entry = entry
        self.settings = proxy_settings
        #: Requests currently using this adapter (a replaced adapter is closed once it drops to 0).
        self.in_flight = 0

    def supports(self, api: apis_base.ApiFormat, operation: str) -> bool:
        """Whether this adapter can serve `operation` of format `api`."""
        return api in self.apis

    def upstream_model(self, model: str, route: config.ModelRoute) -> str:
        """The model name to send upstream (the pipeline rewrites a body whose `model` differs)."""
        return route.upstream_name or model

    @abc.abstractmethod
    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        """Forward `call`; raises `errors.ProxyError` (upstream_timeout / upstream_unreachable) when
        no response arrives. HTTP error statuses are returned, not raised."""

    def secret_values(self) -> tuple[bytes, ...]:
        """Credential strings to scrub from upstream bodies passed through to clients."""
        values = [self.entry.api_key, *self.entry.secret_fields.values()]
        return tuple(v.encode() for v in values if v and len(v) >= 8)

    async def close(self) -> None:
        """Release pooled connections."""
        return None


class HttpUpstreamResponse(UpstreamResponse):
    """An `aiohttp.ClientResponse` behind the `UpstreamResponse` interface."""

    __slots__ = ("_deadline", "_limit", "_response", "_timeout_s")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        timeout_s: float,
        *,
        deadline: float | None = None,
        limit: int | None = None,
    ) -> None:
        self._response = response
        self._timeout_s = timeout_s
        #: Loop time by which a whole-body `read` must be done (non-streamed total deadline).
        self._deadline = deadline
        #: Largest body `read` accepts, counted after decompression.
        self._limit = limit
        self.status = response.status
        self.headers = response.headers
        self.error = None

    async def read(self) -> bytes:
        """The whole body, decompressed; ProxyError upstream_timeout past the total deadline (a
        provider trickling bytes), upstream_response_too_large above the limit (a small gzip body
        can unpack to gigabytes: counted as it is inflated, never held whole)."""
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout_at(self._deadline):
                while chunk := await self._response.content.readany():
                    size += len(chunk)
                    if self._limit is not None and size > self._limit:
                        self._response.close()
                        raise errors.ProxyError(
                            "upstream_response_too_large",
                            f"The provider's answer is larger than the allowed {self._limit} bytes "
                            "(decompressed).",
                        )
                    parts.append(chunk)
        except TimeoutError:
            raise errors.ProxyError(
                "upstream_timeout", f"The provider did not finish its response within {self._timeout_s:g} s."
            ) from None
        except aiohttp.ClientError:
            raise errors.ProxyError(
                "upstream_unreachable", "The provider closed the connection mid-response."
            ) from None
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except TimeoutError:
            self.error = f"upstream sent nothing for {self._timeout_s:g} s"
        except aiohttp.ClientError as exc:
            self.error = f"upstream connection broke: {type(exc).__name__}"

    def close(self) -> None:
        # A connection that broke mid-body must never go back to the pool.
        if self.error is None and self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class HttpAdapter(ProviderAdapter):
    """Base of adapters with an HTTP upstream: subclasses implement `prepare`."""

    def __init__(self, entry: config.ProviderEntry, proxy_settings: settings.ProxySettings) -> None:
        super().__init__(entry, proxy_settings)
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=proxy_settings.upstream_connect_timeout_s,
            sock_read=proxy_settings.upstream_timeout_s,
        )

    @abc.abstractmethod
    async def prepare(self, call: UpstreamCall) -> PreparedRequest:
        """URL, headers with the real credential, and final body for `call`."""

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.settings.upstream_connections,
            ttl_dns_cache=300,
            keepalive_timeout=60,
            ssl=ssl.create_default_context(),
        )
        # auto_decompress: the pipeline parses usage out of bodies, so it needs plain bytes;
        # Content-Encoding is dropped from what the client gets.
        return aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=True,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )

    async def send(self, call: UpstreamCall) -> UpstreamResponse:
        prepared = await self.prepare(call)
        if self._session is None:
            self._session = self._new_session()
        # A non-streamed answer has one total deadline, headers and body (a stream is bounded per
        # chunk by the inactivity timeout only).
        total_s = self.settings.upstream_response_timeout_s
        deadline = None if call.stream else asyncio.get_running_loop().time() + total_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._session.request(
                    prepared.method, prepared.url, data=_payload(prepared.body), headers=prepared.headers
                )
        except TimeoutError:
            raise errors.ProxyError(
                "upstream_timeout",
                f"The provider did not answer within {self.settings.upstream_timeout_s:g} s.",
            ) from None
        except aiohttp.ClientError as exc:
            raise errors.ProxyError(
                "upstream_unreachable", f"Could not reach the provider ({type(exc).__name__})."
            ) from None
        return HttpUpstreamResponse(
            response,
            total_s if deadline is not None else self.settings.upstream_timeout_s,
            deadline=deadline,
            limit=self.settings.max_upstream_response_bytes,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _payload(body: bytes) -> bytes | io.BytesIO:
    """What aiohttp sends: bytes, or a file-like object for large bodies (aiohttp copies large raw
    bytes on the event loop and warns about it); both carry Content-Length."""
    return body if len(body) <= 1024 * 1024 else io.BytesIO(body)


def join_url(base: str, path: str) -> str:
    """`base` (with or without a trailing slash) + `path` (with a leading slash)."""
    return base.rstrip("/") + path
