"""Secret redaction: virtual keys and credentials scrubbed from every log record and from upstream
responses passed to clients.

`install()` (called by every entry point: `llmkeys proxy`, `llmkeys serve`, `llmkeys operator`, and
`app.create_app`) puts a log record factory in place, so every record of every logger the process
has, aiohttp's own included, is redacted when it is made: its message, its arguments and its
traceback text. What is redacted: anything shaped like a virtual key (`sk-llmk-...`, cut-off ones
included: an oversized header is logged truncated), values after `Bearer`, credential headers
(`x-api-key:`, `api-key:`, `x-goog-api-key:`, `authorization:`), `key=` URL parameters, common
provider key shapes (OpenAI/Anthropic `sk-...`, Google `AIza...`, AWS access key ids), and the exact
credential values of the loaded config (`remember_secrets`). The pipeline scrubs the same credential
values out of upstream bodies and headers with `Scrubber`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

import orjson

REDACTED = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A virtual key, whole or cut: keep the public key id when it is complete.
    (re.compile(r"sk-llmk-([a-z0-9]{12})-[A-Za-z0-9]+"), rf"sk-llmk-\1-{REDACTED}"),
    (re.compile(r"sk-llmk-[A-Za-z0-9]*"), f"sk-llmk-{REDACTED}"),
    (re.compile(r"(?i)(\bbearer\s+)[^\s'\",;]+"), rf"\1{REDACTED}"),
    (
        re.compile(
            r"(?i)(\b(?:x-api-key|api-key|x-goog-api-key|authorization|proxy-authorization)\s*[:=]\s*)[^\s'\",;]+"
        ),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)([?&](?:key|api[-_]?key|access_token|token)=)[^&\s'\"]+"), rf"\1{REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), f"sk-{REDACTED}"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
)

_known_lock = threading.Lock()
#: Credential values of configs this process loaded (never removed: a rotated-out value must stay
#: out of the logs too). Only values of 8 characters or more (shorter ones would redact words).
_known: frozenset[str] = frozenset()


def remember_secrets(values: Iterable[str]) -> None:
    """Add credential values (from a loaded config) to what every log record is scrubbed of."""
    global _known
    fresh = {value for value in values if len(value) >= 8}
    if fresh <= _known:
        return
    with _known_lock:
        _known = _known | fresh


def known_secrets() -> frozenset[str]:
    """Every credential value remembered so far (the test suite's leak scan looks for them)."""
    return _known


def redact(text: str) -> str:
    """`text` with every key- or credential-shaped part replaced by `[redacted]`."""
    for value in _known:
        if value in text:
            text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_base_factory = logging.getLogRecordFactory()
_installed = False


def _redacting_factory(*args: object, **kwargs: object) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: log what there is, redacted
        message = f"{record.msg!s} {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and record.exc_info[0] is not None:
        # Format the traceback now (Formatter reuses exc_text), redacted: exception messages of the
        # HTTP parser quote the bytes they refused.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def install() -> None:
    """Redact every log record made from now on in this process (idempotent)."""
    global _installed, _base_factory
    if _installed:
        return
    _base_factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_redacting_factory)
    _installed = True


class Scrubber:
    """Replaces credential values in bytes passed to a client: `scrub` for a whole body, `feed` and
    `finish` for a stream (a value split across two chunks is still found: a chunk ending in the
    start of a value holds those bytes back until the next chunk shows whether the value follows;
    other chunks pass at once, so streaming latency is unchanged)."""

    __slots__ = ("_held", "_values")

    def __init__(self, secrets: Iterable[bytes]) -> None:
        values: set[bytes] = set()
        for secret in secrets:
            values.add(secret)
            # The same value as it appears inside a JSON string (escaped / and newlines).
            values.add(orjson.dumps(secret.decode("utf-8", "replace"))[1:-1])
        self._values = tuple(sorted((v for v in values if len(v) >= 8), key=len, reverse=True))
        self._held = b""

    @property
    def active(self) -> bool:
        return bool(self._values)

    def scrub(self, data: bytes) -> bytes:
        for value in self._values:
            if value in data:
                data = data.replace(value, _REDACTED_BYTES)
        return data

    def scrub_text(self, text: str) -> str:
        return self.scrub(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def feed(self, chunk: bytes) -> bytes:
        if not self._values:
            return chunk
        data = self.scrub(self._held + chunk)
        cut = len(data)
        for value in self._values:
            # The earliest position in the last len(value) - 1 bytes where a value may begin.
            first = value[:1]
            position = data.find(first, max(0, len(data) - len(value) + 1))
            while position != -1 and position < cut:
                if value.startswith(data[position:]):
                    cut = position
                    break
                position = data.find(first, position + 1)
        self._held = data[cut:]
        return data[:cut]

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return self.scrub(held)


_REDACTED_BYTES = REDACTED.encode()
