"""Who is signed in: the username and groups the API server would derive from the same ID token.

Built by `oidc` from validated ID-token claims with the configured claim names and prefixes (the
API server's --oidc-username-claim/-prefix and --oidc-groups-claim/-prefix), stored in the session
(`session`) and sent as impersonation headers (`kubeapi`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: Kubernetes reserves this prefix for its own users and groups (system:masters is cluster-admin,
#: system:serviceaccount:... are workloads): the portal never impersonates such an identity.
RESERVED_PREFIX = "system:"
#: Bounds that keep an identity fit for a header and a cookie.
MAX_NAME_CHARS = 256
MAX_GROUPS = 64


class IdentityError(ValueError):
    """The ID token does not yield a usable identity (the message says which claim and why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """A signed-in person as Kubernetes knows them."""

    username: str
    groups: tuple[str, ...] = ()

    def is_in(self, users: list[str] | tuple[str, ...], groups: list[str] | tuple[str, ...]) -> bool:
        """True when this identity is one of `users` or belongs to one of `groups`."""
        return self.username in users or any(group in groups for group in self.groups)


def _clean(value: str, what: str) -> str:
    if not value or len(value) > MAX_NAME_CHARS:
        raise IdentityError(f"{what} must be 1 to {MAX_NAME_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise IdentityError(f"{what} holds control characters")
    return value


def from_claims(
    claims: Mapping[str, Any],
    *,
    username_claim: str,
    username_prefix: str,
    groups_claim: str,
    groups_prefix: str,
) -> Identity:
    """The identity the API server would see for these claims (prefixes applied as it applies them)."""
    raw = claims.get(username_claim)
    if not isinstance(raw, str):
        raise IdentityError(f"the ID token has no string claim {username_claim!r} for the username")
    if username_claim == "email" and claims.get("email_verified") is False:
        # The API server refuses unverified e-mail usernames; so does the portal.
        raise IdentityError("the ID token's email is not verified (email_verified is false)")
    username = _clean(username_prefix + raw, "the username")
    if username.startswith(RESERVED_PREFIX):
        raise IdentityError(f"the username may not start with {RESERVED_PREFIX!r} (reserved by Kubernetes)")
    raw_groups = claims.get(groups_claim) if groups_claim else None
    if raw_groups is None:
        groups: list[str] = []
    elif isinstance(raw_groups, str):
        groups = [raw_groups]
    elif isinstance(raw_groups, list) and all(isinstance(g, str) for g in raw_groups):
        groups = list(raw_groups)
    else:
        raise IdentityError(f"the ID token's claim {groups_claim!r} must be a string or a list of strings")
    if len(groups) > MAX_GROUPS:
        raise IdentityError(f"the ID token names {len(groups)} groups; the portal takes at most {MAX_GROUPS}")
    cleaned = tuple(dict.fromkeys(_clean(groups_prefix + g, "a group name") for g in groups))
    if any(group.startswith(RESERVED_PREFIX) for group in cleaned):
        raise IdentityError(f"a group may not start with {RESERVED_PREFIX!r} (reserved by Kubernetes)")
    return Identity(username=username, groups=cleaned)
