"""The floor: a bare aiohttp pass-through with a static key check, for comparison with the real proxy.

Started by `bench.__main__` as the `floor` scenarios (`python -m bench.floor_proxy --port P
--upstream URL --api-key K --upstream-key U`). No limits, no usage accounting, no audit line: what
Python + aiohttp + uvloop cost per request on one core, the number the real proxy is measured against.
"""

from __future__ import annotations

import argparse
import collections.abc
import hmac
import sys

import aiohttp
from aiohttp import web

_UPSTREAM_SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)
_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding")
)


def create_app(upstream: str, api_key: str, upstream_key: str) -> web.Application:
    expected = f"Bearer {api_key}"
    upstream_auth = f"Bearer {upstream_key}"

    async def session_ctx(app: web.Application) -> collections.abc.AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=60)
        app[_UPSTREAM_SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[_UPSTREAM_SESSION].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"error": {"message": "bad key", "code": "invalid_api_key"}}, status=401)
        body = await request.read()
        headers = {"Authorization": upstream_auth, "Content-Type": "application/json"}
        session = request.app[_UPSTREAM_SESSION]
        async with session.post(upstream + request.path, data=body, headers=headers) as upstream_response:
            out_headers = {k: v for k, v in upstream_response.headers.items() if k.lower() not in _HOP_BY_HOP}
            if upstream_response.content_type != "text/event-stream":
                payload = await upstream_response.read()
                return web.Response(body=payload, status=upstream_response.status, headers=out_headers)
            response = web.StreamResponse(status=upstream_response.status, headers=out_headers)
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_get("/readyz", ready)
    return app


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, without /v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--upstream-key", required=True)
    args = parser.parse_args(argv)
    import uvloop

    app = create_app(args.upstream, args.api_key, args.upstream_key)
    web.run_app(
        app, host="127.0.0.1", port=args.port, print=None, access_log=None, loop=uvloop.new_event_loop()
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
