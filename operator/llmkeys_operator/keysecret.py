"""The key Secret of a VirtualKey: pure builders and readers of its body, and key rotation rules.

Called by `reconcile` (which does the API calls). The Secret is the only place the full key
lives: `api-key` plus ready-made environment entries so a workload's `envFrom` works with every
official SDK. Rotation state rides along in the Secret's annotations: when the key was issued, the
SHA-256 of the previous key and until when it stays valid (never the previous plaintext), and the
last `llmkeys.io/rotate` token handled.

A keyless VirtualKey (`spec.staticKey: false`) gets a Secret without any secret: its key id, the
base URLs and `LLMKEYS_AUTH=workload-token` (the workload presents its own token instead).

Deleting the Secret destroys the key material: the operator then issues a new key (same public
key id, so usage counters continue) and the old key stops working. That is the honest outcome: the
old plaintext is unknown to the operator by design.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from llmkeys_operator import api, durations
from llmkeys_proxy import config, keys

API_KEY = "api-key"
SECRET_NAME_SUFFIX = "-llm-key"  # noqa: S105  (a name, not a secret)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "llmkeys"
#: Every Secret the operator reads carries this label; its watch selects on it server-side, so the
#: operator never lists or caches the cluster's other Secrets. Values: `key` (key Secrets), `config`
#: (compiled proxy config), `credential` (added by a person to a ProviderCredential's Secret).
LABEL_SECRET = api.SECRET_LABEL
SECRET_KEY = "key"  # noqa: S105  (label values, not secrets)
SECRET_CONFIG = "config"  # noqa: S105
SECRET_CREDENTIAL = api.SECRET_LABEL_CREDENTIAL
LABEL_VIRTUALKEY = "llmkeys.io/virtualkey"
LABEL_KEY_ID = "llmkeys.io/key-id"

ANNOTATION_ISSUED_AT = "llmkeys.io/issued-at"
ANNOTATION_PREVIOUS_SHA256 = "llmkeys.io/previous-key-sha256"
ANNOTATION_PREVIOUS_VALID_UNTIL = "llmkeys.io/previous-key-valid-until"
ANNOTATION_ROTATE_HANDLED = "llmkeys.io/rotate-handled"
#: Set on a VirtualKey by a person or pipeline (any new value) to rotate its key now.
ANNOTATION_ROTATE = "llmkeys.io/rotate"

DEFAULT_GRACE = timedelta(hours=1)
#: The audience workloads ask their tokens for (the proxy's LLMKEYS_TOKEN_AUDIENCE default).
DEFAULT_AUDIENCE = "llmkeys"


#: `LLMKEYS_AUTH` in the Secret of a keyless key: present a workload token, there is no key.
AUTH_WORKLOAD_TOKEN = "workload-token"  # noqa: S105  (a mode name, not a secret)
#: Entries that carry the static key (removed from the Secret when a key becomes keyless).
STATIC_KEY_ENTRIES = (
    API_KEY,
    "LLMKEYS_API_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AWS_BEARER_TOKEN_BEDROCK",
)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyMaterial:
    """The current key of a VirtualKey (None when keyless: only its id) and its rotation bookkeeping."""

    key: str | None = dataclasses.field(repr=False)
    issued_at: datetime
    previous_sha256: str | None = None
    previous_valid_until: datetime | None = None
    rotate_token: str | None = None
    #: The public id of a keyless key (a static key carries its own).
    keyless_id: str | None = None

    @property
    def key_id(self) -> str:
        if self.key is None:
            assert self.keyless_id is not None  # keyless material is built with its id
            return self.keyless_id
        parsed = keys.parse_key(self.key)
        assert parsed is not None  # KeyMaterial is only built from valid keys
        return parsed.key_id

    @property
    def secret_sha256(self) -> str | None:
        if self.key is None:
            return None
        parsed = keys.parse_key(self.key)
        assert parsed is not None
        return keys.hash_secret(parsed.secret)

    def hashes(self, now: datetime) -> tuple[config.SecretHash, ...]:
        """What the proxy may accept: the current key, plus the previous one until its grace ends."""
        if self.secret_sha256 is None:
            return ()
        current = config.SecretHash(sha256=self.secret_sha256)
        if (
            self.previous_sha256
            and self.previous_valid_until is not None
            and now < self.previous_valid_until
            and self.previous_sha256 != current.sha256
        ):
            previous = config.SecretHash(sha256=self.previous_sha256, not_after=self.previous_valid_until)
            return (current, previous)
        return (current,)


def secret_name(vk: api.VirtualKey) -> str:
    """Name of the key Secret: `spec.secretName`, default `<name>-llm-key`."""
    return vk.spec.secret_name or f"{vk.metadata.name}{SECRET_NAME_SUFFIX}"


def issue(
    now: datetime, key_id: str | None = None, rotate_token: str | None = None, *, static: bool = True
) -> KeyMaterial:
    """A brand-new key (keeping `key_id` when given, so usage history stays attached); with
    `static=False` only a key id (a keyless key)."""
    if not static:
        return KeyMaterial(
            key=None,
            issued_at=_whole_seconds(now),
            rotate_token=rotate_token,
            keyless_id=key_id or keys.generate_key_id(),
        )
    return KeyMaterial(
        key=keys.generate_key(key_id), issued_at=_whole_seconds(now), rotate_token=rotate_token
    )


def rotate(material: KeyMaterial, now: datetime, grace: timedelta, rotate_token: str | None) -> KeyMaterial:
    """A new secret under the same key id; the old key stays valid for `grace`."""
    fresh = issue(now, material.key_id, rotate_token)
    if grace <= timedelta(0):
        return fresh
    until = _whole_seconds(now) + grace
    return dataclasses.replace(fresh, previous_sha256=material.secret_sha256, previous_valid_until=until)


def rotation_grace(vk: api.VirtualKey) -> timedelta:
    period = vk.spec.rotation_grace_period
    return durations.parse_duration(period) if period else DEFAULT_GRACE


def requested_rotate_token(vk: api.VirtualKey) -> str | None:
    """The `llmkeys.io/rotate` annotation value, if set."""
    token = vk.metadata.annotations.get(ANNOTATION_ROTATE, "").strip()
    return token or None


def rotation_due(vk: api.VirtualKey, material: KeyMaterial, now: datetime) -> str | None:
    """Why the key must rotate now ("requested" or "interval"), or None."""
    if material.key is None:
        return None  # keyless: no secret to rotate
    token = requested_rotate_token(vk)
    if token is not None and token != material.rotate_token:
        return "requested"
    next_at = next_rotation_at(vk, material)
    if next_at is not None and now >= next_at:
        return "interval"
    return None


def next_rotation_at(vk: api.VirtualKey, material: KeyMaterial) -> datetime | None:
    if not vk.spec.rotation_interval:
        return None
    interval = durations.parse_duration(vk.spec.rotation_interval)
    if interval <= timedelta(0):
        return None
    return material.issued_at + interval


def env_entries(key: str, proxy_url: str) -> dict[str, str]:
    """Environment variables every official SDK reads, all pointing at the proxy with the virtual key."""
    base = proxy_url.rstrip("/")
    parsed = keys.parse_key(key)
    key_id = parsed.key_id if parsed is not None else ""
    return {
        API_KEY: key,
        "LLMKEYS_API_KEY": key,
        "LLMKEYS_KEY_ID": key_id,
        "LLMKEYS_BASE_URL": base,
        "OPENAI_API_KEY": key,
        "OPENAI_BASE_URL": f"{base}/v1",
        "ANTHROPIC_API_KEY": key,
        "ANTHROPIC_BASE_URL": base,
        "AZURE_OPENAI_API_KEY": key,
        "AZURE_OPENAI_ENDPOINT": base,
        "GEMINI_API_KEY": key,
        "GOOGLE_API_KEY": key,
        "GOOGLE_GEMINI_BASE_URL": base,
        "AWS_BEARER_TOKEN_BEDROCK": key,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": base,
    }


def keyless_env_entries(key_id: str, proxy_url: str, audience: str) -> dict[str, str]:
    """The Secret of a keyless key: where the proxy is and how to call it, and no secret at all."""
    base = proxy_url.rstrip("/")
    return {
        "LLMKEYS_KEY_ID": key_id,
        "LLMKEYS_BASE_URL": base,
        "LLMKEYS_AUTH": AUTH_WORKLOAD_TOKEN,
        "LLMKEYS_TOKEN_AUDIENCE": audience,
        "OPENAI_BASE_URL": f"{base}/v1",
        "ANTHROPIC_BASE_URL": base,
        "AZURE_OPENAI_ENDPOINT": base,
        "GOOGLE_GEMINI_BASE_URL": base,
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": base,
    }


def secret_entries(material: KeyMaterial, proxy_url: str, audience: str) -> dict[str, str]:
    """What the key Secret (or the standalone env file) of `material` holds."""
    if material.key is None:
        return keyless_env_entries(material.key_id, proxy_url, audience)
    return env_entries(material.key, proxy_url)


def labels(vk: api.VirtualKey, key_id: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SECRET: SECRET_KEY,
        LABEL_VIRTUALKEY: vk.metadata.name,
        LABEL_KEY_ID: key_id,
    }


def owner_reference(vk: api.VirtualKey) -> dict[str, Any]:
    """Makes the VirtualKey the Secret's controller: deleting the key deletes the Secret (GC)."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": "VirtualKey",
        "name": vk.metadata.name,
        "uid": vk.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _annotations(material: KeyMaterial) -> dict[str, str | None]:
    return {
        ANNOTATION_ISSUED_AT: _format_time(material.issued_at),
        ANNOTATION_PREVIOUS_SHA256: material.previous_sha256,
        ANNOTATION_PREVIOUS_VALID_UNTIL: (
            _format_time(material.previous_valid_until) if material.previous_valid_until else None
        ),
        ANNOTATION_ROTATE_HANDLED: material.rotate_token,
    }


def build_key_secret(
    vk: api.VirtualKey, material: KeyMaterial, proxy_url: str, audience: str = DEFAULT_AUDIENCE
) -> dict[str, Any]:
    """The complete key Secret body for `vk` holding `material`."""
    annotations = {name: value for name, value in _annotations(material).items() if value is not None}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(vk),
            "namespace": vk.metadata.namespace,
            "labels": labels(vk, material.key_id),
            "annotations": annotations,
            "ownerReferences": [owner_reference(vk)],
        },
        "data": {name: _b64(value) for name, value in secret_entries(material, proxy_url, audience).items()},
    }


def repair_patch(
    existing: Mapping[str, Any],
    vk: api.VirtualKey,
    material: KeyMaterial,
    proxy_url: str,
    audience: str = DEFAULT_AUDIENCE,
) -> dict[str, Any] | None:
    """A merge patch bringing our fields of `existing` back to what `material` needs, or None when
    nothing we own differs. Data keys and labels a user added are left alone; a keyless key's
    Secret loses every entry that carried the static key."""
    desired = build_key_secret(vk, material, proxy_url, audience)
    meta = existing.get("metadata") or {}
    patch: dict[str, Any] = {}
    data = existing.get("data") or {}
    data_patch: dict[str, Any] = {k: v for k, v in desired["data"].items() if data.get(k) != v}
    if material.key is None:
        data_patch.update({k: None for k in STATIC_KEY_ENTRIES if k in data})
    elif "LLMKEYS_AUTH" in data:
        data_patch["LLMKEYS_AUTH"] = None
    if data_patch:
        patch["data"] = data_patch
    current_labels = meta.get("labels") or {}
    label_patch = {k: v for k, v in desired["metadata"]["labels"].items() if current_labels.get(k) != v}
    meta_patch: dict[str, Any] = {}
    if label_patch:
        meta_patch["labels"] = label_patch
    current_annotations = meta.get("annotations") or {}
    annotation_patch = {k: v for k, v in _annotations(material).items() if current_annotations.get(k) != v}
    if annotation_patch:
        meta_patch["annotations"] = annotation_patch
    if not _has_controller(existing, vk.metadata.uid):
        meta_patch["ownerReferences"] = desired["metadata"]["ownerReferences"]
    if meta_patch:
        patch["metadata"] = meta_patch
    return patch or None


def read_key_secret(body: Mapping[str, Any]) -> KeyMaterial | None:
    """The key material in a Secret body; None when `api-key` is missing or not a valid key."""
    data = body.get("data") or {}
    key = _unb64(data.get(API_KEY))
    keyless_id = None
    if key is None or keys.parse_key(key) is None:
        key_id = _unb64(data.get("LLMKEYS_KEY_ID"))
        if (
            _unb64(data.get("LLMKEYS_AUTH")) != AUTH_WORKLOAD_TOKEN
            or key_id is None
            or not keys.is_key_id(key_id)
        ):
            return None
        key, keyless_id = None, key_id
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    issued_at = _parse_time(annotations.get(ANNOTATION_ISSUED_AT))
    if issued_at is None:
        created = _parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        issued_at = created or datetime.fromtimestamp(0, UTC)
    previous = annotations.get(ANNOTATION_PREVIOUS_SHA256) or None
    if previous is not None and (len(previous) != 64 or any(c not in "0123456789abcdef" for c in previous)):
        previous = None
    return KeyMaterial(
        key=key,
        issued_at=issued_at,
        previous_sha256=previous,
        previous_valid_until=_parse_time(annotations.get(ANNOTATION_PREVIOUS_VALID_UNTIL)),
        rotate_token=annotations.get(ANNOTATION_ROTATE_HANDLED) or None,
        keyless_id=keyless_id,
    )


def is_owned_by(body: Mapping[str, Any], uid: str | None) -> bool:
    """True when the Secret names the VirtualKey with this uid as its controller."""
    return _has_controller(body, uid)


def _has_controller(body: Mapping[str, Any], uid: str | None) -> bool:
    if not uid:
        return False
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("uid") == uid and ref.get("kind") == "VirtualKey" and ref.get("controller"):
            return True
    return False


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode("ascii")


def _unb64(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _whole_seconds(value: datetime) -> datetime:
    # Annotations carry whole seconds; round-tripping must give the same instant.
    return value.astimezone(UTC).replace(microsecond=0)


def _format_time(value: datetime) -> str:
    return _whole_seconds(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
