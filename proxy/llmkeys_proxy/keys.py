"""Virtual key format: generate, parse, hash and verify `sk-llmk-<keyId>-<secret>` keys.

Used by the operator (to issue keys) and by the proxy (to authenticate requests). The proxy only
ever holds SHA-256(secret); the full key exists in the workload's Secret and nowhere else.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass

PREFIX = "sk-llmk-"
KEY_ID_LENGTH = 12
# 43 base62 characters carry 256.03 bits of entropy.
SECRET_LENGTH = 43
_KEY_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits

#: Regex for secret scanners (gitleaks, trufflehog, GitHub custom patterns). Documented in README.md.
#: No word boundaries and at least 16 secret characters rather than exactly 43: a key glued to more
#: characters (an oversized header padded after it) or cut off (a truncated log line) is still a leak.
SCANNER_REGEX = r"sk-llmk-[a-z0-9]{12}-[A-Za-z0-9]{16,}"
_KEY_RE = re.compile(r"sk-llmk-([a-z0-9]{12})-([A-Za-z0-9]{43})")
_KEY_ID_RE = re.compile(r"[a-z0-9]{12}")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A syntactically valid virtual key split into its public id and its secret part."""

    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret, even in tracebacks
        return f"ParsedKey(key_id={self.key_id!r}, secret=<redacted>)"


def generate_key_id() -> str:
    """A fresh public key id: 12 characters of [a-z0-9] (about 62 bits, collision-safe for lookups)."""
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def generate_secret() -> str:
    """A fresh secret part: 43 base62 characters from `secrets` (>= 256 bits)."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def format_key(key_id: str, secret: str) -> str:
    """Join an id and a secret into the wire form a workload sends."""
    return f"{PREFIX}{key_id}-{secret}"


def generate_key(key_id: str | None = None) -> str:
    """A complete new key; pass `key_id` to keep a key's public id across rotations."""
    return format_key(key_id or generate_key_id(), generate_secret())


def is_key_id(value: str) -> bool:
    """True when `value` has the shape of a public key id."""
    return _KEY_ID_RE.fullmatch(value) is not None


def parse_key(value: str) -> ParsedKey | None:
    """Split a presented key; None when it is not a well-formed llmkeys key (the caller answers 401)."""
    match = _KEY_RE.fullmatch(value)
    if match is None:
        return None
    return ParsedKey(key_id=match.group(1), secret=match.group(2))


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of the secret part: what the compiled config stores."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()
