"""Session and sign-in cookies: signed and encrypted (Fernet), bounded in age, HttpOnly, SameSite.

Called by `app`. The cookie holds the whole session (no server-side store, so replicas need no
shared state): identity, CSRF token, sign-in time, and one-time reveal tickets. Fernet (AES-128-CBC
plus HMAC-SHA256, from `cryptography`) both signs and encrypts, and carries its own timestamp, so a
cookie older than the session lifetime is refused even when a browser keeps it. The keys are
derived with HKDF from LLMKEYS_PORTAL_SESSION_KEY, one per purpose, so a sign-in cookie is never
accepted as a session. A cookie that fails to decrypt is treated as absent (the user signs in again).
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
import secrets
import time
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from llmkeys_operator.portal import identity

#: Browsers keep about 4 KB per cookie; a session that would not fit is refused at sign-in.
MAX_COOKIE_BYTES = 4000
#: How long a revealed-once ticket may wait to be used.
TICKET_MAX_AGE_S = 3600


class SessionTooLarge(ValueError):
    """The session would not fit into a cookie (too many or too long group names)."""


@dataclasses.dataclass(frozen=True, slots=True)
class RevealTicket:
    """A promise to show a key once: after its creation (`uid`) or its rotation (`rotate_token`)."""

    id: str
    namespace: str
    name: str
    uid: str = ""
    rotate_token: str = ""
    issued_at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    """What a signed-in browser carries."""

    who: identity.Identity
    csrf: str
    signed_in_at: float
    tickets: tuple[RevealTicket, ...] = ()

    def with_ticket(self, ticket: RevealTicket) -> Session:
        kept = tuple(t for t in self.tickets if (t.namespace, t.name) != (ticket.namespace, ticket.name))
        return dataclasses.replace(self, tickets=(*kept[-3:], ticket))

    def without_ticket(self, ticket_id: str) -> Session:
        return dataclasses.replace(self, tickets=tuple(t for t in self.tickets if t.id != ticket_id))

    def ticket_for(self, namespace: str, name: str, now: float) -> RevealTicket | None:
        for ticket in self.tickets:
            if (ticket.namespace, ticket.name) == (
                namespace,
                name,
            ) and now - ticket.issued_at < TICKET_MAX_AGE_S:
                return ticket
        return None

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(str(presented), self.csrf)


def new_session(who: identity.Identity, now: float | None = None) -> Session:
    return Session(who=who, csrf=secrets.token_urlsafe(32), signed_in_at=time.time() if now is None else now)


def _derive(secret: str, purpose: bytes) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"llmkeys-portal", info=purpose).derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


class CookieCodec:
    """Seals and opens the portal's cookies (see module docstring)."""

    def __init__(self, secret: str, *, max_age_s: int, login_max_age_s: int) -> None:
        self._session = _derive(secret, b"session")
        self._login = _derive(secret, b"login")
        self.max_age_s = max_age_s
        self.login_max_age_s = login_max_age_s

    def seal_session(self, session: Session) -> str:
        payload = {
            "u": session.who.username,
            "g": list(session.who.groups),
            "c": session.csrf,
            "t": session.signed_in_at,
            "r": [dataclasses.asdict(t) for t in session.tickets],
        }
        # Fernet's own timestamp is "now"; the session's age counts from sign-in, so keep that time.
        sealed = self._session.encrypt_at_time(
            json.dumps(payload, separators=(",", ":")).encode(), int(session.signed_in_at)
        ).decode("ascii")
        if len(sealed) > MAX_COOKIE_BYTES:
            raise SessionTooLarge(
                "the session does not fit into a cookie (too many groups in the ID token); "
                "ask the IdP administrators to send fewer groups to this client"
            )
        return sealed

    def open_session(self, sealed: str | None) -> Session | None:
        data = self._open(self._session, sealed, self.max_age_s)
        if data is None:
            return None
        try:
            who = identity.Identity(username=str(data["u"]), groups=tuple(str(g) for g in data["g"]))
            tickets = tuple(RevealTicket(**t) for t in data.get("r", []))
            return Session(who=who, csrf=str(data["c"]), signed_in_at=float(data["t"]), tickets=tickets)
        except (KeyError, TypeError, ValueError):
            return None

    def seal_login(self, data: dict[str, Any]) -> str:
        return self._login.encrypt(json.dumps(data, separators=(",", ":")).encode()).decode("ascii")

    def open_login(self, sealed: str | None) -> dict[str, Any] | None:
        return self._open(self._login, sealed, self.login_max_age_s)

    @staticmethod
    def _open(fernet: Fernet, sealed: str | None, max_age_s: int) -> dict[str, Any] | None:
        if not sealed or len(sealed) > MAX_COOKIE_BYTES:
            return None
        try:
            raw = fernet.decrypt(sealed.encode("ascii"), ttl=max_age_s)
        except (InvalidToken, UnicodeEncodeError, ValueError):
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
