"""The audit trail's records: one per request (proxy) and one per lifecycle act (operator), at the
key's audit level, written to the gateway's sinks (audit_sinks.py) (DESIGN.md 6.7 and 11).

`AuditRecord` is built by the settlement step after the response finished, only for keys whose
effective level is not `none`. Level `metadata` (the default) holds who (key id, namespace/name,
owner, the workload identity of a token), what (provider, model, api, status, code), how much
(tokens, cost) and how long, never prompts, completions, keys, tokens or credentials. Level
`content` adds the request and response bodies, cut at LLMKEYS_AUDIT_CONTENT_MAX_BYTES, with virtual
keys, provider credentials and bearer tokens replaced by `[redacted]` (`content_text`).
`LifecycleRecord` is what the operator writes for acts on keys (created, approved, rotated, ...):
who, which fields changed, when; never secret values.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import orjson

logger = logging.getLogger("llmkeys.audit")

Level = Literal["none", "metadata", "content"]
LEVELS: tuple[Level, ...] = ("none", "metadata", "content")

#: Credentials that may sit in a prompt or a completion: virtual keys, OpenAI/Anthropic-style keys,
#: AWS access key ids, Google API keys, bearer tokens and JWTs.
_SECRET_RE = re.compile(
    r"sk-llmk-[a-z0-9]{12}-[A-Za-z0-9]+"
    r"|sk-[A-Za-z0-9_-]{16,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{12,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
REDACTED = "[redacted]"


@dataclasses.dataclass(slots=True)
class AuditRecord:
    """The fields of one request record (None fields are written as null)."""

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
    #: The workload identity (issuer, subject) that called with a token; None for the static key.
    identity: dict[str, str] | None = None
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
    #: The client's User-Agent header (cut at 256 characters).
    user_agent: str | None = None
    #: The end user the request names: OpenAI `user` / `safety_identifier`, Anthropic
    #: `metadata.user_id` (cut at 256 characters). Never the content.
    end_user: str | None = None
    kind: str = "request"
    level: Level = "metadata"
    #: Days the key's audit policy keeps this record (None: the gateway's default).
    retain_days: int | None = None
    #: W3C trace id of the request's span (OpenTelemetry sink only).
    trace_id: str | None = None
    #: Level `content` only: the request and response bodies, capped and scrubbed.
    prompt: str | None = None
    completion: str | None = None


@dataclasses.dataclass(slots=True)
class LifecycleRecord:
    """One act on a key, written by the operator."""

    time: datetime
    #: created, approved, denied, rotated, suspended, resumed, expired, deleted, limits_changed,
    #: policy_changed.
    act: str
    namespace: str
    name: str
    key_id: str | None = None
    #: Who did it, where the API server told us (the admission webhook's stamp), else None.
    by: str | None = None
    #: What changed: field -> {"from": old, "to": new} (never secret values).
    changes: dict[str, object] | None = None
    reason: str | None = None
    owner: dict[str, str] | None = None
    kind: str = "lifecycle"
    retain_days: int | None = None


def content_text(data: bytes | None, cap: int, secrets: Iterable[bytes] = ()) -> str | None:
    """`data` as text for a content-level record: cut to `cap` bytes, credentials redacted."""
    if data is None:
        return None
    # Scrub a little past the cut, so a credential straddling it is still recognised.
    cut = data[: cap + 256]
    for secret in secrets:
        cut = cut.replace(secret, REDACTED.encode())
    text = _SECRET_RE.sub(REDACTED, cut.decode("utf-8", errors="replace"))
    if len(data) > cap:
        text = text[:cap]
        text += f" [truncated: {len(data)} bytes]"
    return text


def line(record: AuditRecord | LifecycleRecord) -> bytes:
    """The JSON line of `record` (what the stdout sink writes)."""
    return orjson.dumps(record, option=orjson.OPT_UTC_Z)
