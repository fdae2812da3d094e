"""The audit trail: one JSON line per request on the `llmkeys.audit` logger (DESIGN.md 6.7).

Written by the settlement step after the response finished. Holds who (key id, namespace/name,
owner), what (provider, model, api, status, code), how much (tokens, cost) and how long — never
prompts, completions, keys or credentials. Route the logger wherever audit logs belong; it does
not propagate to the root logger's formatting cost when disabled.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

import orjson

logger = logging.getLogger("llmkeys.audit")


@dataclasses.dataclass(slots=True)
class AuditRecord:
    """The fields of one audit line (None fields are written as null)."""

    time: datetime
    request_id: str
    status: int
    code: str
    api: str
    method: str
    path: str
    latency_ms: float
    key_id: str | None = None
    namespace: str | None = None
    name: str | None = None
    owner: dict[str, str] | None = None
    provider: str | None = None
    model: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micro_usd: int = 0
    #: "provider" (reported usage), "estimate" (counted locally: stream cut off), or "none".
    usage_source: str = "none"
    #: True when the limiter was unreachable and the key's policy let the request through.
    limiter_bypassed: bool = False
    client_disconnected: bool = False
    upstream_error: str | None = None


def enabled() -> bool:
    """Whether audit lines are wanted (lets the caller skip building them)."""
    return logger.isEnabledFor(logging.INFO)


def write(record: AuditRecord) -> None:
    """Emit one audit line."""
    logger.info(orjson.dumps(record, option=orjson.OPT_UTC_Z).decode())


def line(record: AuditRecord) -> bytes:
    """The JSON line of `record` (for tests and other sinks)."""
    return orjson.dumps(record, option=orjson.OPT_UTC_Z)
