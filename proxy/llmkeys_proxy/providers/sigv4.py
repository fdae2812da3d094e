"""AWS Signature Version 4 for upstream Bedrock calls; called by the Bedrock adapter per request.

A small stdlib implementation (hashlib/hmac) so the proxy needs no botocore; a test checks it
against botocore's own signer byte for byte. Signs the exact path and body the proxy sends, so the
signature is computed after every change to the request (never reused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime

ALGORITHM = "AWS4-HMAC-SHA256"
# Headers a hop may rewrite or that AWS never expects signed (botocore's blacklist, lower-cased).
_UNSIGNED_HEADERS = frozenset(
    {"authorization", "expect", "user-agent", "x-amzn-trace-id", "transfer-encoding", "connection"}
)


@dataclasses.dataclass(frozen=True, slots=True)
class AwsCredentials:
    """Static AWS credentials from the ProviderCredential's Secret (never logged)."""

    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)


def _hmac_sha256(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day/region/service (AWS docs: kDate -> kRegion -> kService -> kSigning)."""
    k_date = _hmac_sha256(f"AWS4{secret_access_key}".encode(), date)
    k_region = _hmac_sha256(k_date, region)
    k_service = _hmac_sha256(k_region, service)
    return _hmac_sha256(k_service, "aws4_request")


def canonical_uri(path: str) -> str:
    """Path as AWS canonicalises it for non-S3 services: dot segments and empty segments removed
    (RFC 3986 5.2.4), then URI-encoded once more (an encoded ``%3A`` in a model id becomes ``%253A``)."""
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = ("/" if path.startswith("/") else "") + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return urllib.parse.quote(normalized, safe="/~")


def canonical_query(query: str) -> str:
    """Query parameters sorted by encoded name then value, each encoded with AWS's unreserved set."""
    if not query:
        return ""
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        pairs.append(
            (
                urllib.parse.quote(urllib.parse.unquote_plus(name), safe="-_.~"),
                urllib.parse.quote(urllib.parse.unquote_plus(value), safe="-_.~"),
            )
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def sign_headers(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    service: str = "bedrock",
    now: datetime | None = None,
) -> dict[str, str]:
    """Headers to add to the request so AWS accepts it: X-Amz-Date, Authorization and, for
    temporary credentials, X-Amz-Security-Token.

    `url` must carry the path exactly as it goes on the wire (already percent-encoded); `headers`
    are the headers that will be sent (Host is taken from the URL when absent). The payload hash
    is always signed, which AWS accepts over TLS and plain HTTP alike.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    parts = urllib.parse.urlsplit(url)

    to_sign: dict[str, list[str]] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname in _UNSIGNED_HEADERS or lname in ("x-amz-date", "x-amz-security-token"):
            continue
        to_sign.setdefault(lname, []).append(" ".join(value.split()))
    if "host" not in to_sign:
        to_sign["host"] = [_default_host(parts)]
    added = {"X-Amz-Date": amz_date}
    to_sign["x-amz-date"] = [amz_date]
    if credentials.session_token:
        added["X-Amz-Security-Token"] = credentials.session_token
        to_sign["x-amz-security-token"] = [credentials.session_token]

    names = sorted(to_sign)
    signed_headers = ";".join(names)
    canonical_headers = "".join(f"{name}:{','.join(to_sign[name])}\n" for name in names)
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(parts.path),
            canonical_query(parts.query),
            canonical_headers,
            signed_headers,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest())
    )
    key = signing_key(credentials.secret_access_key, date, region, service)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    added["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return added


def _default_host(parts: urllib.parse.SplitResult) -> str:
    # Like botocore: the default port for the scheme is left out of the Host header.
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    if parts.port is not None and (parts.scheme, parts.port) not in (("http", 80), ("https", 443)):
        return f"{host}:{parts.port}"
    return host
