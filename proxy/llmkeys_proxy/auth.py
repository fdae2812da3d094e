"""Authentication: find the virtual key (or workload token) wherever an SDK put it, verify it,
check the key's state.

Called first by every proxied route (pipeline.py) and by /v1/models (app.py). Unknown, malformed,
wrongly-signed and revoked keys all get the same 401 with the same message, so a caller learns
nothing about which part was wrong. A value shaped like a JWT is a workload identity token instead:
identity.py verifies it (401 with a token_* code saying what to fix: the caller holds the token and
learns nothing secret), then the identity is mapped to its key through the current config on every
request, so a removed binding stops working even for a token verified before. Only a caller that
proved itself learns that its key is suspended, expired or in breach of a policy (403, each with
its own code). Keys and tokens are never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime

from multidict import CIMultiDictProxy

from llmkeys_proxy import config, errors, identity, keys

#: Headers SDKs send keys in, in the order they are looked at (after `Authorization: Bearer`).
KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")
#: Every header that may carry a key: none of them is ever forwarded upstream.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", *KEY_HEADERS})

_INVALID_KEY_MESSAGE = "Invalid API key. Use the virtual key from your llmkeys key Secret."


def presented_key(headers: CIMultiDictProxy[str], query: Mapping[str, str]) -> str | None:
    """The key as sent: `Authorization: Bearer` (OpenAI, Bedrock API keys), `x-api-key` (Anthropic),
    `api-key` (Azure), `x-goog-api-key` or `?key=` (Gemini)."""
    value = headers.get("Authorization")
    if value is not None:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()
    return query.get("key")


#: (issuer, subject) -> the keys binding that identity, each with the binding's required claims.
IdentityIndex = Mapping[tuple[str, str], tuple[tuple[config.KeyEntry, config.Identity], ...]]


def looks_like_jwt(value: str) -> bool:
    """A compact JWS (`eyJ...` header, three dot-separated parts); virtual keys never look like one."""
    return value.startswith("eyJ") and value.count(".") == 2


async def authenticate_any(
    key_index: Mapping[str, config.KeyEntry],
    identities: IdentityIndex,
    verifier: identity.TokenVerifier | None,
    presented: str | None,
    now: datetime,
) -> tuple[config.KeyEntry, identity.VerifiedToken | None]:
    """The key of a presented virtual key or workload token, and the verified token (None for a
    virtual key). A token already verified costs a dictionary lookup."""
    if presented is None or not looks_like_jwt(presented):
        return authenticate(key_index, presented, now), None
    if verifier is None:
        raise errors.ProxyError(
            "token_issuer_untrusted", "This gateway trusts no token issuer; use a virtual key."
        )
    token = verifier.cached(presented) or await verifier.verify(presented)
    return key_for_identity(identities, token, now), token


def key_for_identity(
    identities: IdentityIndex, token: identity.VerifiedToken, now: datetime
) -> config.KeyEntry:
    """The key bound to a verified token's identity (and claims) in the current config; raises
    ProxyError (401 token_not_bound, or the key-state 403s)."""
    bindings = identities.get((token.issuer, token.subject))
    if not bindings:
        raise errors.ProxyError("token_not_bound", f"No VirtualKey binds the identity {token.describe()}.")
    for entry, binding in bindings:
        if all(token.claims.get(name) == value for name, value in binding.claims.items()):
            check_key_state(entry, now)
            return entry
    names = sorted({name for _, binding in bindings for name in binding.claims})
    raise errors.ProxyError(
        "token_not_bound",
        f"The identity {token.describe()} is bound to a VirtualKey, but the token's claims "
        f"{', '.join(names)} do not match the binding.",
    )


def claimed_key(
    key_index: Mapping[str, config.KeyEntry],
    presented: str | None,
    identities: IdentityIndex | None = None,
    verifier: identity.TokenVerifier | None = None,
) -> tuple[str, config.KeyEntry | None]:
    """For metrics of refused requests: the key id the presented key names when the config knows
    it (with its entry), else `unknown` (well-formed, no such key), `malformed` or `missing`. A
    token names the first key binding its verified identity (a suspended key's refusals count
    against it), else `token`. Only config-known ids are ever returned, so callers cannot grow a
    label's values."""
    if not presented:
        return "missing", None
    if looks_like_jwt(presented):
        token = verifier.cached(presented) if verifier is not None else None
        bindings = identities.get((token.issuer, token.subject)) if token and identities else None
        return (bindings[0][0].key_id, bindings[0][0]) if bindings else ("token", None)
    parsed = keys.parse_key(presented)
    if parsed is None:
        return "malformed", None
    entry = key_index.get(parsed.key_id)
    return (parsed.key_id, entry) if entry is not None else ("unknown", None)


def invalid_key() -> errors.ProxyError:
    return errors.ProxyError("invalid_api_key", _INVALID_KEY_MESSAGE)


def authenticate(
    key_index: Mapping[str, config.KeyEntry], presented: str | None, now: datetime
) -> config.KeyEntry:
    """The KeyEntry of a valid presented key; raises ProxyError (401 invalid_api_key, 403
    key_suspended / key_inactive / key_expired / key_policy_violation / key_pending_approval /
    key_approval_denied)."""
    if not presented:
        raise invalid_key()
    parsed = keys.parse_key(presented)
    if parsed is None:
        raise invalid_key()
    entry = key_index.get(parsed.key_id)
    if entry is None:
        raise invalid_key()
    # Compare against every hash (rotation keeps two) without stopping early.
    digest = keys.hash_secret(parsed.secret)
    matches = [hmac.compare_digest(digest, ok.sha256) and ok.valid_at(now) for ok in entry.hashes]
    if not any(matches):
        raise invalid_key()
    check_key_state(entry, now)
    return entry


def check_key_state(entry: config.KeyEntry, now: datetime) -> None:
    """Raise the 403 of a suspended, expired or policy-breaking key."""
    if entry.suspended:
        raise errors.ProxyError("key_suspended", "This virtual key is suspended.")
    if entry.inactive:
        raise errors.ProxyError(
            "key_inactive",
            "This virtual key was suspended for inactivity; its owner can reactivate it "
            "(annotation llmkeys.io/reactivated-at on the VirtualKey).",
        )
    expires_at = entry.expires_at
    if expires_at is not None:
        if expires_at.tzinfo is None:  # the contract says UTC; tolerate a naive timestamp
            expires_at = expires_at.replace(tzinfo=UTC)
        if now >= expires_at:
            shown = expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
            raise errors.ProxyError("key_expired", f"This virtual key expired at {shown}.")
    if entry.policy_violation:
        raise errors.ProxyError("key_policy_violation", entry.policy_violation)
    if entry.approval == "pending":
        raise errors.ProxyError(
            "key_pending_approval",
            "This virtual key waits for approval (see its VirtualKey's Ready condition).",
        )
    if entry.approval == "denied":
        raise errors.ProxyError("key_approval_denied", "This virtual key's approval was denied.")
