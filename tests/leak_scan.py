"""The suite-wide leak scan: every log line, metric exposition and proxy response body the test run
produces is checked for virtual keys and provider credentials.

Installed for the whole session by tests/conftest.py; the verdict is `tests/test_leak_scan.py`, run
last. What is collected:
- every log record of every logger in the test process (root at INFO, as the proxy runs), message
  and traceback text as a handler would print them;
- the body and headers of every response of every proxy app built in the process (`create_app` is
  wrapped to add an `on_response_prepare` recorder): error bodies, /metrics, passed-through upstream
  answers;
- files named `stdout`, `stderr` or `*.log` under the run's tmp_path base (where subprocess proxies,
  operators and `llmkeys serve` write their output).
What counts as a leak: `keys.SCANNER_REGEX` (the regex README documents), and any provider credential
value a proxy of this run loaded (`redaction.known_secrets`, 8 characters or more).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from llmkeys_proxy import app as proxy_app
from llmkeys_proxy import keys, redaction

_KEY = re.compile(keys.SCANNER_REGEX)
_OUTPUT_NAMES = ("stdout", "stderr")


@dataclasses.dataclass
class Finding:
    where: str
    what: str  # "virtual key" or "provider credential"; the value itself is never shown


class LeakScan(logging.Handler):
    """Collects what the run produced (see module docstring); `findings()` judges it."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.log_lines: list[str] = []
        self.bodies: list[tuple[str, bytes]] = []
        self.output_roots: list[pathlib.Path] = []
        self.extra_secrets: set[str] = set()

    # -- collecting ---------------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log_lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    async def record_response(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = "".join(f"{name}: {value}\n" for name, value in response.headers.items())
        body = response.body if isinstance(response, web.Response) else None
        data = body if isinstance(body, bytes) else b""
        self.bodies.append((f"{request.method} {request.path} -> {response.status}", headers.encode() + data))

    def wrap_create_app(self, original: Callable[..., web.Application]) -> Callable[..., web.Application]:
        def create_app(*args: Any, **kwargs: Any) -> web.Application:
            app = original(*args, **kwargs)
            app.on_response_prepare.append(self.record_response)
            return app

        return create_app

    # -- judging ------------------------------------------------------------------------------------

    def _texts(self) -> Iterator[tuple[str, str]]:
        for index, line in enumerate(self.log_lines):
            yield f"log line {index}", line
        for where, data in self.bodies:
            yield f"response {where}", data.decode("utf-8", "replace")
        for root in self.output_roots:
            for path in sorted(root.rglob("*")):
                if path.is_file() and (path.name in _OUTPUT_NAMES or path.suffix == ".log"):
                    yield str(path), path.read_text(encoding="utf-8", errors="replace")

    def findings(self) -> list[Finding]:
        credentials = sorted(redaction.known_secrets() | self.extra_secrets, key=len, reverse=True)
        found: list[Finding] = []
        for where, text in self._texts():
            if _KEY.search(text):
                found.append(Finding(where, "virtual key"))
            if any(value in text for value in credentials):
                found.append(Finding(where, "provider credential"))
        return found

    @property
    def scanned(self) -> tuple[int, int]:
        return len(self.log_lines), len(self.bodies)


_current: LeakScan | None = None


def current() -> LeakScan | None:
    return _current


def start(output_root: pathlib.Path) -> LeakScan:
    """Begin collecting for this process (called once per session)."""
    global _current
    scan = LeakScan()
    scan.output_roots.append(output_root)
    root = logging.getLogger()
    root.addHandler(scan)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    proxy_app.create_app = scan.wrap_create_app(proxy_app.create_app)  # type: ignore[method-assign]
    _current = scan
    return scan
