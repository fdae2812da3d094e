"""Reconcile functions of the operator: key Secrets, the compiled proxy config, and status.

Called by `handlers` (kopf wiring) with explicit arguments. Three jobs:

- `reconcile_key_secret`: make a VirtualKey's Secret hold a valid key owned by it (create it once,
  repair edits, rotate on `rotationInterval` or the `llmkeys.io/rotate` annotation). It always
  reads the Secret fresh under a per-key lock before writing, so a stale cache can never cause a
  second rotation or a second key.
- `publish`: compile every observed resource (kopf indexes, complete before any handler runs, so a
  restarted operator never publishes a partial config) into the proxy config, write the config
  Secrets whose content changed, then patch the status of every resource whose outcome changed.
  Handlers only `request_publish()`; `run_publisher` debounces bursts into one compile.
- Deadlines: the earliest future instant at which a key's state changes by itself (expiry, end of
  a rotation grace period, next interval rotation), for `runtime.run_deadlines` to wake up at.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic

from llmkeys_operator import api, approvals, compile, durations, events, keysecret, kube, notifier, settings
from llmkeys_proxy import config, keys

logger = logging.getLogger("llmkeys.operator")

ObjectRef = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

CONFIG_SECRET_PROVIDERS = "llmkeys-config-providers"  # noqa: S105  (a name, not a secret)
CONFIG_SECRET_KEYS_PREFIX = "llmkeys-config-keys-"  # noqa: S105
LABEL_SOURCE_NAMESPACE = "llmkeys.io/source-namespace"


# ------------------------------------------------------------------------------- index entries


@dataclasses.dataclass(frozen=True)
class IndexedVirtualKey:
    """What the VirtualKey index keeps of one object (no secret data is ever in a VirtualKey)."""

    model: api.VirtualKey | None  # None when the spec does not validate
    error: str | None
    uid: str | None
    generation: int | None
    raw_status: Mapping[str, Any]
    deleting: bool


@dataclasses.dataclass(frozen=True)
class IndexedKeySecret:
    """What the key-Secret index keeps: hashes and bookkeeping, never the key itself."""

    owner_uid: str | None
    key_id: str | None
    secret_sha256: str | None
    issued_at: datetime | None
    previous_sha256: str | None
    previous_valid_until: datetime | None
    resource_version: str | None


def index_virtual_key(body: Mapping[str, Any]) -> IndexedVirtualKey:
    meta = body.get("metadata") or {}
    raw_status = dict(body.get("status") or {})
    model, error = parse_virtual_key(body)
    return IndexedVirtualKey(
        model=model,
        error=error,
        uid=meta.get("uid"),
        generation=meta.get("generation"),
        raw_status=raw_status,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def parse_virtual_key(body: Mapping[str, Any]) -> tuple[api.VirtualKey | None, str | None]:
    """The model, or None and a short reason (field locations and messages, never input values)."""
    try:
        return api.VirtualKey.model_validate(dict(body)), None
    except pydantic.ValidationError:
        pass
    # A status we cannot read (e.g. written by a newer version) must not make the spec invalid.
    try:
        return api.VirtualKey.model_validate({k: v for k, v in body.items() if k != "status"}), None
    except pydantic.ValidationError as exc:
        return None, config.summarise_validation_error(exc)


def parse_policy(body: Mapping[str, Any]) -> api.LLMPolicy | None:
    try:
        return api.LLMPolicy.model_validate(dict(body))
    except pydantic.ValidationError:
        try:
            return api.LLMPolicy.model_validate({k: v for k, v in body.items() if k != "status"})
        except pydantic.ValidationError as exc:
            logger.warning(
                "ignoring invalid LLMPolicy %s: %s", _name_of(body), config.summarise_validation_error(exc)
            )
            return None


def parse_credential(body: Mapping[str, Any]) -> api.ProviderCredential | None:
    try:
        return api.ProviderCredential.model_validate({k: v for k, v in body.items() if k != "status"})
    except pydantic.ValidationError as exc:
        logger.warning(
            "ignoring invalid ProviderCredential %s: %s",
            _name_of(body),
            config.summarise_validation_error(exc),
        )
        return None


def index_key_secret(body: Mapping[str, Any]) -> IndexedKeySecret:
    meta = body.get("metadata") or {}
    owner_uid = None
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "VirtualKey" and ref.get("controller"):
            owner_uid = ref.get("uid")
    material = keysecret.read_key_secret(body)
    return IndexedKeySecret(
        owner_uid=owner_uid,
        key_id=material.key_id if material else None,
        secret_sha256=material.secret_sha256 if material else None,
        issued_at=material.issued_at if material else None,
        previous_sha256=material.previous_sha256 if material else None,
        previous_valid_until=material.previous_valid_until if material else None,
        resource_version=meta.get("resourceVersion"),
    )


def decode_secret_data(body: Mapping[str, Any]) -> dict[str, str]:
    """Secret data as text; undecodable entries are skipped (they cannot be API keys anyway)."""
    decoded: dict[str, str] = {}
    for name, value in (body.get("data") or {}).items():
        try:
            decoded[name] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            continue
    for name, value in (body.get("stringData") or {}).items():
        if isinstance(value, str):
            decoded[name] = value
    return decoded


#: Secret types that never hold a provider credential (and can be large): not indexed.
_NOT_CREDENTIAL_TYPES = frozenset(
    {"helm.sh/release.v1", "kubernetes.io/service-account-token", "kubernetes.io/tls"}
)


def may_hold_credential(labels: Mapping[str, str], secret_type: object) -> bool:
    """Gateway-namespace Secrets indexed for ProviderCredentials' secretRefs: labelled
    `llmkeys.io/secret: credential` by whoever created them (and never of a type that cannot hold one)."""
    return (
        labels.get(keysecret.LABEL_SECRET) == keysecret.SECRET_CREDENTIAL
        and config.CONFIG_LABEL not in labels
        and keysecret.LABEL_VIRTUALKEY not in labels
        and secret_type not in _NOT_CREDENTIAL_TYPES
    )


def _name_of(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name')}".lstrip("/")


# ------------------------------------------------------------------------------------- context


@dataclasses.dataclass
class Indexes:
    """kopf's indexes (read-only views), captured at startup; keys map to one value each."""

    virtual_keys: Mapping[ObjectRef, Iterable[IndexedVirtualKey]]
    policies: Mapping[str, Iterable[api.LLMPolicy]]
    credentials: Mapping[ObjectRef, Iterable[api.ProviderCredential]]
    key_secrets: Mapping[ObjectRef, Iterable[IndexedKeySecret]]
    gateway_secrets: Mapping[ObjectRef, Iterable[dict[str, str]]]
    config_secrets: Mapping[str, Iterable[str]]
    namespaces: Mapping[str, Iterable[dict[str, str]]]


def _one(store: Iterable[Any]) -> Any:
    for value in store:
        return value
    return None


class InFlightWrites:
    """Writes whose watch echo the indexes have not shown yet, so the next publish (often run
    before the echo arrives) does not write the same thing again. An entry counts for `ttl_s`
    only: if the echo never shows it (kopf coalesced it with a later edit by someone else), the
    index is trusted again and the write repeated."""

    def __init__(self, ttl_s: float = 3.0) -> None:
        self.ttl_s = ttl_s
        self._items: dict[Any, tuple[str, float]] = {}

    def record(self, key: Any, value: Any) -> None:
        self._items[key] = (_canonical(value), time.monotonic())

    def pending(self, key: Any, value: Any) -> bool:
        item = self._items.get(key)
        return item is not None and item[0] == _canonical(value) and time.monotonic() - item[1] < self.ttl_s

    def settle(self, key: Any) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        now = time.monotonic()
        for key in [k for k, (_, at) in self._items.items() if now - at >= self.ttl_s]:
            del self._items[key]
        return len(self._items)


@dataclasses.dataclass
class ReconcileContext:
    """Per-process state shared by the handlers (kept in kopf's memo)."""

    settings: settings.OperatorSettings
    kube: kube.KubeClient
    events: events.EventRecorder
    indexes: Indexes | None = None
    #: Alert notifications to webhooks (None: none are sent).
    notifier: notifier.Notifier | None = None
    #: Alert state this process last wrote per key/pool, until the watch shows it in status.
    alert_states: dict[Any, dict[str, Any]] = dataclasses.field(default_factory=dict)
    publish_requested: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Conflicting Secrets found by reconcile_key_secret: VirtualKey ref -> message.
    secret_conflicts: dict[ObjectRef, str] = dataclasses.field(default_factory=dict)
    #: resourceVersions of key Secrets we wrote, to skip the watch echo of our own writes.
    own_secret_versions: dict[ObjectRef, str] = dataclasses.field(default_factory=dict)
    #: Config Secret contents we wrote and the index has not shown yet.
    config_in_flight: InFlightWrites = dataclasses.field(default_factory=lambda: InFlightWrites())
    #: Statuses we patched and the index has not shown yet, per (plural, ref).
    status_in_flight: InFlightWrites = dataclasses.field(default_factory=lambda: InFlightWrites())
    #: Next instant each key changes by itself; `runtime.run_deadlines` sleeps until the earliest.
    deadlines: dict[ObjectRef, datetime] = dataclasses.field(default_factory=dict)
    deadlines_changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    last_result: compile.CompileResult | None = None
    publishes: int = 0
    _locks: dict[ObjectRef, asyncio.Lock] = dataclasses.field(default_factory=dict)

    def request_publish(self) -> None:
        self.publish_requested.set()

    def key_lock(self, ref: ObjectRef) -> asyncio.Lock:
        lock = self._locks.get(ref)
        if lock is None:
            lock = self._locks[ref] = asyncio.Lock()
        return lock

    def forget_key(self, ref: ObjectRef) -> None:
        self.secret_conflicts.pop(ref, None)
        self.deadlines.pop(ref, None)
        self._locks.pop(ref, None)
        self.status_in_flight.settle(("virtualkeys", ref))

    def virtual_key(self, ref: ObjectRef) -> IndexedVirtualKey | None:
        if self.indexes is None or ref not in self.indexes.virtual_keys:
            return None
        entry: IndexedVirtualKey | None = _one(self.indexes.virtual_keys[ref])
        return entry


# ----------------------------------------------------------------------------------- key Secret


def _now() -> datetime:
    return datetime.now(UTC)


async def reconcile_virtual_key(ctx: ReconcileContext, body: Mapping[str, Any]) -> None:
    """A VirtualKey was created, changed, or seen at startup: see to its key Secret."""
    model, error = parse_virtual_key(body)
    if model is None:
        logger.warning("VirtualKey %s has an invalid spec: %s", _name_of(body), error)
        ctx.request_publish()  # its status says why
        return
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    await reconcile_key_secret(ctx, model)


def on_virtual_key_event(ctx: ReconcileContext, event_type: str | None, ref: ObjectRef) -> None:
    """Any VirtualKey watch event: forget a deleted key's state, and republish."""
    if event_type == "DELETED":
        ctx.forget_key(ref)
        logger.info("VirtualKey %s/%s deleted: its key is revoked", *ref)
    ctx.request_publish()


async def on_key_secret_event(ctx: ReconcileContext, event_type: str | None, body: Mapping[str, Any]) -> None:
    """A key Secret changed: repair it unless the change is our own write, and republish."""
    if event_type != "DELETED" and is_own_echo(ctx, body):
        ctx.request_publish()  # the index now holds what we wrote
        return
    if event_type is None:  # initial listing: the VirtualKey's resume handler checks it
        ctx.request_publish()
        return
    vk = owner_of_key_secret(ctx, body)
    if vk is None:
        ctx.request_publish()
        return
    await reconcile_key_secret(ctx, vk)


async def reconcile_key_secret(
    ctx: ReconcileContext, vk: api.VirtualKey, *, now: datetime | None = None
) -> None:
    """Make the key Secret of `vk` exist, hold a valid key of this VirtualKey, and be rotated when due."""
    ref = (vk.metadata.namespace or "", vk.metadata.name)
    async with ctx.key_lock(ref):
        await _reconcile_key_secret_locked(ctx, vk, ref, now or _now())
    ctx.request_publish()


async def _reconcile_key_secret_locked(
    ctx: ReconcileContext, vk: api.VirtualKey, ref: ObjectRef, now: datetime
) -> None:
    namespace, _ = ref
    name = keysecret.secret_name(vk)
    status_key_id = vk.status.key_id if vk.status is not None else None
    known_key_id = status_key_id if status_key_id and keys.is_key_id(status_key_id) else None
    for _attempt in range(3):
        existing = await ctx.kube.get(kube.SECRETS, namespace, name)
        static = vk.spec.static_key
        audience = ctx.settings.token_audience
        if existing is None:
            material = keysecret.issue(now, known_key_id, keysecret.requested_rotate_token(vk), static=static)
            body = keysecret.build_key_secret(vk, material, ctx.settings.proxy_url, audience)
            created = await ctx.kube.create(kube.SECRETS, namespace, body)
            if created is None:
                continue  # created meanwhile (by a user or a peer): look at it again
            _remember_write(ctx, (namespace, name), created)
            ctx.secret_conflicts.pop(ref, None)
            if known_key_id:
                logger.info(
                    "key Secret %s/%s was missing: issued a new key for %s", namespace, name, known_key_id
                )
                ctx.events.record(
                    _vk_ref(vk),
                    "Warning",
                    "KeyReissued",
                    f'Secret "{name}" was missing: a new key was issued (the previous key no longer works)',
                )
            else:
                logger.info("issued key %s into Secret %s/%s", material.key_id, namespace, name)
                ctx.events.record(
                    _vk_ref(vk), "Normal", "KeyIssued", f'key {material.key_id} issued into Secret "{name}"'
                )
            return
        if not keysecret.is_owned_by(existing, vk.metadata.uid):
            message = (
                f'Secret "{name}" already exists and is not owned by this VirtualKey; it is left untouched'
            )
            if ctx.secret_conflicts.get(ref) != message:
                ctx.events.record(_vk_ref(vk), "Warning", "SecretConflict", message)
            ctx.secret_conflicts[ref] = message
            return
        ctx.secret_conflicts.pop(ref, None)
        found = keysecret.read_key_secret(existing)
        event: tuple[str, str, str] | None = None
        if found is None or (known_key_id is not None and found.key_id != known_key_id):
            material = keysecret.issue(now, known_key_id, keysecret.requested_rotate_token(vk), static=static)
            event = (
                "Warning",
                "KeyReissued",
                f'Secret "{name}" held no valid key of this VirtualKey: a new key was issued',
            )
        elif static != (found.key is not None):
            # staticKey changed: issue a static key under the same id, or take it out of the Secret.
            material = keysecret.issue(now, found.key_id, found.rotate_token, static=static)
            event = (
                ("Normal", "KeyIssued", f'a static key was issued into Secret "{name}"')
                if static
                else (
                    "Normal",
                    "StaticKeyRemoved",
                    f'keyless: the static key was removed from Secret "{name}"',
                )
            )
        else:
            material = found
            due = keysecret.rotation_due(vk, material, now)
            if due is not None:
                token = keysecret.requested_rotate_token(vk) if due == "requested" else material.rotate_token
                material = keysecret.rotate(material, now, keysecret.rotation_grace(vk), token)
                grace = keysecret.rotation_grace(vk)
                event = (
                    "Normal",
                    "KeyRotated",
                    f"key rotated ({'on request' if due == 'requested' else 'rotationInterval'}); "
                    f"the previous key stays valid for {int(grace.total_seconds())}s",
                )
        patch = keysecret.repair_patch(existing, vk, material, ctx.settings.proxy_url, audience)
        if patch is None:
            return
        patched = await ctx.kube.patch(kube.SECRETS, namespace, name, patch)
        if patched is None:
            continue  # deleted meanwhile: issue again
        _remember_write(ctx, (namespace, name), patched)
        if event is not None:
            ctx.events.record(_vk_ref(vk), *event)
            logger.info("%s: %s/%s", event[1], namespace, vk.metadata.name)
        else:
            logger.info("repaired key Secret %s/%s", namespace, name)
        return
    raise RuntimeError(f"key Secret {namespace}/{name} kept changing while reconciling; will retry")


def _remember_write(ctx: ReconcileContext, secret_ref: ObjectRef, body: Mapping[str, Any]) -> None:
    version = (body.get("metadata") or {}).get("resourceVersion")
    if version:
        ctx.own_secret_versions[secret_ref] = str(version)


def is_own_echo(ctx: ReconcileContext, body: Mapping[str, Any]) -> bool:
    """True when a key-Secret watch event only shows what we wrote ourselves."""
    meta = body.get("metadata") or {}
    secret_ref = (meta.get("namespace") or "", meta.get("name") or "")
    version = meta.get("resourceVersion")
    return version is not None and ctx.own_secret_versions.get(secret_ref) == str(version)


def owner_of_key_secret(ctx: ReconcileContext, body: Mapping[str, Any]) -> api.VirtualKey | None:
    """The live VirtualKey a key Secret belongs to (by label and uid), if any."""
    meta = body.get("metadata") or {}
    vk_name = (meta.get("labels") or {}).get(keysecret.LABEL_VIRTUALKEY)
    if not vk_name:
        return None
    entry = ctx.virtual_key((meta.get("namespace") or "", vk_name))
    if entry is None or entry.model is None or entry.deleting:
        return None
    if keysecret.secret_name(entry.model) != meta.get("name"):
        return None
    return entry.model


def _vk_ref(vk: api.VirtualKey) -> events.ObjectReference:
    return events.ObjectReference(
        api_version=api.API_VERSION,
        kind="VirtualKey",
        namespace=vk.metadata.namespace or "",
        name=vk.metadata.name,
        uid=vk.metadata.uid or "",
    )


# ------------------------------------------------------------------------------------- publish


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything `compile` needs, read from the indexes at one instant."""

    virtual_keys: dict[ObjectRef, IndexedVirtualKey]
    policies: list[api.LLMPolicy]
    credentials: list[api.ProviderCredential]
    secrets: dict[ObjectRef, dict[str, str]]
    issued: dict[ObjectRef, compile.IssuedKey]
    namespace_labels: dict[str, dict[str, str]]
    config_secrets: dict[str, str]


def take_snapshot(indexes: Indexes, now: datetime) -> Snapshot:
    virtual_keys: dict[ObjectRef, IndexedVirtualKey] = {}
    for ref, store in indexes.virtual_keys.items():
        entry = _one(store)
        if entry is not None and not entry.deleting:
            virtual_keys[ref] = entry
    issued = {}
    for ref, entry in virtual_keys.items():
        if entry.model is None:
            continue
        secret_ref = (ref[0], keysecret.secret_name(entry.model))
        secret = _one(indexes.key_secrets[secret_ref]) if secret_ref in indexes.key_secrets else None
        issued_key = issued_key_from(secret, entry.uid, now)
        if issued_key is not None:
            issued[ref] = issued_key
    return Snapshot(
        virtual_keys=virtual_keys,
        policies=[p for store in indexes.policies.values() if (p := _one(store)) is not None],
        credentials=[c for store in indexes.credentials.values() if (c := _one(store)) is not None],
        secrets={
            ref: data for ref, store in indexes.gateway_secrets.items() if (data := _one(store)) is not None
        },
        issued=issued,
        namespace_labels={
            name: labels for name, store in indexes.namespaces.items() if (labels := _one(store)) is not None
        },
        config_secrets={
            name: content
            for name, store in indexes.config_secrets.items()
            if (content := _one(store)) is not None
        },
    )


def issued_key_from(
    secret: IndexedKeySecret | None, vk_uid: str | None, now: datetime
) -> compile.IssuedKey | None:
    """The key the proxy should accept for a VirtualKey, from its (owned, valid) Secret."""
    if secret is None or secret.key_id is None or secret.issued_at is None:
        return None
    if vk_uid is None or secret.owner_uid != vk_uid:
        return None
    if secret.secret_sha256 is None:  # keyless: the key id only
        return compile.IssuedKey(key_id=secret.key_id, hashes=(), issued_at=secret.issued_at)
    hashes = [config.SecretHash(sha256=secret.secret_sha256)]
    if (
        secret.previous_sha256
        and secret.previous_valid_until is not None
        and now < secret.previous_valid_until
        and secret.previous_sha256 != secret.secret_sha256
    ):
        hashes.append(config.SecretHash(sha256=secret.previous_sha256, not_after=secret.previous_valid_until))
    return compile.IssuedKey(key_id=secret.key_id, hashes=tuple(hashes), issued_at=secret.issued_at)


async def run_publisher(ctx: ReconcileContext) -> None:
    """Compile and publish whenever asked, coalescing bursts (runs for the operator's lifetime)."""
    failures = 0
    while True:
        await ctx.publish_requested.wait()
        await asyncio.sleep(ctx.settings.compile_debounce_s)
        ctx.publish_requested.clear()
        try:
            await publish(ctx, _now())
            failures = 0
            if len(ctx.config_in_flight) or len(ctx.status_in_flight):
                # Re-check once the echoes are overdue, in case none ever comes.
                loop = asyncio.get_running_loop()
                loop.call_later(ctx.config_in_flight.ttl_s + 0.1, ctx.request_publish)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures += 1
            logger.exception("publishing the proxy config failed (attempt %d); retrying", failures)
            await asyncio.sleep(min(30.0, 0.5 * 2**failures))
            ctx.request_publish()


async def publish(ctx: ReconcileContext, now: datetime) -> compile.CompileResult:
    """Compile, write changed config Secrets, then patch changed statuses."""
    assert ctx.indexes is not None, "indexes are captured at startup"
    snapshot = take_snapshot(ctx.indexes, now)
    models = [entry.model for entry in snapshot.virtual_keys.values() if entry.model is not None]
    # Compiling thousands of keys takes a while: off the event loop, so kopf keeps watching.
    result = await asyncio.to_thread(
        compile.compile_proxy_config,
        models,
        snapshot.policies,
        snapshot.credentials,
        snapshot.secrets,
        snapshot.issued,
        now,
        gateway_namespace=ctx.settings.namespace,
        namespace_labels=snapshot.namespace_labels,
    )
    await write_config(ctx, result.config, snapshot.config_secrets)
    ctx.last_result = result
    ctx.publishes += 1
    await write_key_statuses(ctx, snapshot, result, now)
    await write_credential_statuses(ctx, result, now)
    await write_policy_statuses(ctx, snapshot, result, now)
    return result


# ------------------------------------------------------------------------------ config Secrets


def config_documents(proxy_config: config.ProxyConfig) -> dict[str, tuple[str, str, str]]:
    """Config Secret name -> (document kind, source namespace, JSON) for every document."""
    providers, shards = proxy_config.split()
    documents = {CONFIG_SECRET_PROVIDERS: ("providers", "", providers.model_dump_json())}
    for shard in shards:
        name = f"{CONFIG_SECRET_KEYS_PREFIX}{shard.namespace}-{shard.shard}"
        documents[name] = ("keys", shard.namespace, shard.model_dump_json())
    return documents


def config_secret_body(
    name: str, namespace: str, kind: str, source_namespace: str, content: str
) -> dict[str, Any]:
    labels = {
        config.CONFIG_LABEL: kind,
        keysecret.LABEL_MANAGED_BY: keysecret.MANAGED_BY,
        keysecret.LABEL_SECRET: keysecret.SECRET_CONFIG,
    }
    if source_namespace:
        labels[LABEL_SOURCE_NAMESPACE] = source_namespace
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {config.CONFIG_DATA_KEY: base64.b64encode(content.encode()).decode("ascii")},
    }


async def write_config(
    ctx: ReconcileContext, proxy_config: config.ProxyConfig, current: Mapping[str, str]
) -> int:
    """Write the config Secrets whose content differs from what the cluster holds; delete stale
    key shards. Providers first: a new key never points at a provider the proxy has not seen."""
    namespace = ctx.settings.namespace
    documents = config_documents(proxy_config)
    writes = 0
    for name in sorted(documents, key=lambda n: n != CONFIG_SECRET_PROVIDERS):
        kind, source_namespace, content = documents[name]
        if current.get(name) == content:
            ctx.config_in_flight.settle(name)
            continue
        if ctx.config_in_flight.pending(name, content):
            continue
        body = config_secret_body(name, namespace, kind, source_namespace, content)
        written = None
        if name in current:
            written = await ctx.kube.patch(
                kube.SECRETS, namespace, name, {"metadata": body["metadata"], "data": body["data"]}
            )
        if written is None:
            written = await ctx.kube.create(kube.SECRETS, namespace, body)
            if written is None:  # appeared meanwhile
                await ctx.kube.patch(
                    kube.SECRETS, namespace, name, {"metadata": body["metadata"], "data": body["data"]}
                )
        ctx.config_in_flight.record(name, content)
        writes += 1
    for name in sorted(current):
        if name.startswith(CONFIG_SECRET_KEYS_PREFIX) and name not in documents:
            await ctx.kube.delete(kube.SECRETS, namespace, name)
            ctx.config_in_flight.settle(name)
            writes += 1
    if writes:
        logger.info(
            "proxy config written: %d Secret change(s), %d keys, %d providers",
            writes,
            len(proxy_config.keys),
            len(proxy_config.providers),
        )
    return writes


def config_secret_content(body: Mapping[str, Any]) -> str | None:
    """The config.json text of a config Secret (for the index)."""
    data = decode_secret_data(body)
    return data.get(config.CONFIG_DATA_KEY)


# ------------------------------------------------------------------------------------- status


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_conditions(
    contents: Iterable[compile.ConditionContent],
    previous: Iterable[Mapping[str, Any]],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """metav1.Conditions; lastTransitionTime moves only when a condition's status changes."""
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    conditions = []
    for content in contents:
        old = before.get(content.type)
        changed = old is None or old.get("status") != content.status
        condition: dict[str, Any] = {
            "type": content.type,
            "status": content.status,
            "reason": content.reason,
            "message": content.message[:32768],
            "lastTransitionTime": format_time(now) if changed or not old else old.get("lastTransitionTime"),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        conditions.append(condition)
    return conditions


def key_status(
    entry: IndexedVirtualKey,
    outcome: compile.KeyOutcome | None,
    issued: compile.IssuedKey | None,
    secret_name: str | None,
    conflict: str | None,
    rotated_at: datetime | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields the operator owns for one VirtualKey (usage is written by usage sync)."""
    previous = entry.raw_status.get("conditions") or []
    if outcome is None:  # the spec does not validate
        message = f"invalid spec: {entry.error}"
        contents = [compile.ConditionContent("Ready", "False", "InvalidSpec", message)]
        return {
            "conditions": build_conditions(contents, previous, entry.generation, now),
            "observedGeneration": entry.generation,
        }
    ready = outcome.conditions[0]
    if conflict is not None and outcome.reason == "Pending":
        ready = compile.ConditionContent("Ready", "False", "SecretConflict", conflict)
    if conflict is not None:
        secret_condition = compile.ConditionContent("SecretReady", "False", "SecretConflict", conflict)
    elif issued is not None and not issued.hashes:
        secret_condition = compile.ConditionContent(
            "SecretReady",
            "True",
            "Issued",
            f'keyless key {issued.key_id}: Secret "{secret_name}" holds its base URLs, no secret',
        )
    elif issued is not None:
        secret_condition = compile.ConditionContent(
            "SecretReady", "True", "Issued", f'key {issued.key_id} is in Secret "{secret_name}"'
        )
    else:
        secret_condition = compile.ConditionContent(
            "SecretReady", "False", "Pending", "the key Secret is being written"
        )
    contents = [ready, *outcome.conditions[1:], secret_condition]
    contents += watch_conditions(entry.raw_status.get("alerts"), outcome, now)
    effective = (
        outcome.effective.model_dump(mode="json", by_alias=True, exclude_none=True)
        if outcome.effective is not None
        else None
    )
    previous_key_id = entry.raw_status.get("keyId")
    return {
        "conditions": build_conditions(contents, previous, entry.generation, now),
        "observedGeneration": entry.generation,
        "keyId": issued.key_id if issued is not None else previous_key_id,
        "secretName": secret_name,
        "expiresAt": format_time(outcome.expires_at) if outcome.expires_at is not None else None,
        "rotatedAt": format_time(rotated_at) if rotated_at is not None else entry.raw_status.get("rotatedAt"),
        "effective": effective,
        "createdBy": (
            entry.model.metadata.annotations.get(api.ANNOTATION_CREATED_BY) if entry.model else None
        ),
        "approval": approval_status(outcome.approval),
    }


def approval_status(approval: approvals.KeyApproval | None) -> dict[str, Any] | None:
    """status.approval of a key needing approval (None: no applying policy requires one)."""
    if approval is None:
        return None
    status = api.ApprovalStatus(
        state=approval.state,
        by=approval.by if approval.state != "Pending" else None,
        at=approval.at if approval.state != "Pending" else None,
        reason=approval.reason,
        approvers=list(approval.approvers[: api.LIST_MAX]),
    )
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def watch_conditions(
    alert_state: Any, outcome: compile.KeyOutcome, now: datetime
) -> list[compile.ConditionContent]:
    """BudgetAlert (from the alert state usage sync recorded) and Idle (LLMPolicy inactivity), each
    present only when a selecting policy asks for it."""
    contents = []
    if isinstance(alert_state, Mapping) and "period" in alert_state:
        current = now.strftime("%Y-%m")
        reached = alert_state.get("thresholds") or []
        if alert_state.get("period") == current and reached:
            contents.append(
                compile.ConditionContent(
                    "BudgetAlert",
                    "True",
                    "ThresholdReached",
                    f"reached {max(reached)}% of a monthly cap in {current}",
                )
            )
        else:
            contents.append(
                compile.ConditionContent(
                    "BudgetAlert", "False", "BelowThresholds", f"no threshold reached in {current}"
                )
            )
    idle = outcome.idle
    if idle is not None and idle.warn_at is not None:
        since = format_time(idle.since)
        if idle.warn_at <= now:
            until = f"; suspended at {format_time(idle.inactive_at)}" if idle.inactive_at is not None else ""
            contents.append(
                compile.ConditionContent("Idle", "True", "Unused", f"unused since {since}{until}")
            )
        else:
            contents.append(compile.ConditionContent("Idle", "False", "InUse", f"last activity {since}"))
    return contents


def status_changes(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch taking `current` to `desired` on desired's fields, or None when equal."""
    patch = {}
    for field, value in desired.items():
        if _canonical(current.get(field)) != _canonical(value):
            patch[field] = value
    return patch or None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


async def _patch_status(
    ctx: ReconcileContext,
    resource: kube.Resource,
    ref: ObjectRef,
    current: Mapping[str, Any],
    desired: dict[str, Any],
) -> bool:
    key = (resource.plural, ref)
    changes = status_changes(current, desired)
    if changes is None:
        ctx.status_in_flight.settle(key)
        return False
    if ctx.status_in_flight.pending(key, desired):
        return False  # written already; the watch has not shown it yet
    namespace = ref[0] or None
    written = await ctx.kube.patch(resource, namespace, ref[1], {"status": changes}, subresource="status")
    if written is not None:
        ctx.status_in_flight.record(key, desired)
    return True


async def write_key_statuses(
    ctx: ReconcileContext, snapshot: Snapshot, result: compile.CompileResult, now: datetime
) -> None:
    for ref, entry in snapshot.virtual_keys.items():
        outcome = result.keys.get(ref) if entry.model is not None else None
        issued = snapshot.issued.get(ref)
        secret_name = keysecret.secret_name(entry.model) if entry.model is not None else None
        rotated_at = None
        if entry.model is not None and ctx.indexes is not None:
            secret = _one(ctx.indexes.key_secrets.get((ref[0], secret_name or ""), ()))
            if secret is not None and secret.previous_sha256:
                rotated_at = secret.issued_at
        desired = key_status(
            entry, outcome, issued, secret_name, ctx.secret_conflicts.get(ref), rotated_at, now
        )
        _update_deadline(ctx, ref, entry.model, outcome, issued, now)
        before = (entry.raw_status.get("conditions") or [{}])[0]
        was_idle = _condition_status(entry.raw_status.get("conditions"), "Idle")
        if await _patch_status(ctx, kube.VIRTUALKEYS, ref, entry.raw_status, desired):
            _record_transition(ctx, entry, before, desired["conditions"][0])
            idle = [c for c in desired["conditions"] if c["type"] == "Idle"]
            if entry.model is not None and idle and idle[0]["status"] == "True" and was_idle != "True":
                ctx.events.record(_vk_ref(entry.model), "Warning", "Idle", idle[0]["message"])


def _condition_status(conditions: Any, type_: str) -> str | None:
    for condition in conditions or []:
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            status = condition.get("status")
            return str(status) if status is not None else None
    return None


def _record_transition(
    ctx: ReconcileContext, entry: IndexedVirtualKey, before: Mapping[str, Any], after: Mapping[str, Any]
) -> None:
    if entry.model is None or before.get("reason") == after.get("reason"):
        return
    reason = after.get("reason")
    if before.get("reason") in ("PendingApproval", "ApprovalDenied") and reason == "Active":
        by = entry.model.metadata.annotations.get(api.ANNOTATION_APPROVED_BY) or approvals.MANIFEST_APPROVER
        ctx.events.record(_vk_ref(entry.model), "Normal", "Approved", f"approved by {by}")
        return
    kinds = {
        "PendingApproval": ("Normal", "ApprovalRequested"),
        "ApprovalDenied": ("Warning", "ApprovalDenied"),
        "Active": ("Normal", "Active"),
        "Suspended": ("Normal", "Suspended"),
        "Expired": ("Normal", "Expired"),
        "PolicyViolation": ("Warning", "PolicyViolation"),
        "Inactive": ("Warning", "Inactive"),
        "NoUsableModels": ("Warning", "NoUsableModels"),
        "InvalidSpec": ("Warning", "InvalidSpec"),
    }
    if reason in kinds:
        event_type, event_reason = kinds[reason]
        ctx.events.record(_vk_ref(entry.model), event_type, event_reason, str(after.get("message", "")))


def _update_deadline(
    ctx: ReconcileContext,
    ref: ObjectRef,
    vk: api.VirtualKey | None,
    outcome: compile.KeyOutcome | None,
    issued: compile.IssuedKey | None,
    now: datetime,
) -> None:
    deadline = next_deadline(vk, outcome, issued, now)
    if deadline is None:
        ctx.deadlines.pop(ref, None)
        return
    if ctx.deadlines.get(ref) != deadline:
        ctx.deadlines[ref] = deadline
        ctx.deadlines_changed.set()


def next_deadline(
    vk: api.VirtualKey | None,
    outcome: compile.KeyOutcome | None,
    issued: compile.IssuedKey | None,
    now: datetime,
) -> datetime | None:
    """The earliest future instant the key's state changes without any API write: its expiry, the
    end of a rotation grace period, its next interval rotation, or its inactivity warning and
    suspension."""
    candidates = []
    if outcome is not None and outcome.expires_at is not None and outcome.expires_at > now:
        candidates.append(outcome.expires_at)
    if outcome is not None and outcome.idle is not None:
        idle = outcome.idle
        candidates += [at for at in (idle.warn_at, idle.inactive_at) if at is not None and at > now]
    if issued is not None:
        candidates += [h.not_after for h in issued.hashes if h.not_after is not None and h.not_after > now]
        if vk is not None and vk.spec.rotation_interval:
            material_issued = issued.issued_at
            with contextlib.suppress(ValueError):
                interval = durations.parse_duration(vk.spec.rotation_interval)
                if interval.total_seconds() > 0:
                    candidates.append(max(material_issued + interval, now))
    return min(candidates, default=None)


async def write_credential_statuses(
    ctx: ReconcileContext, result: compile.CompileResult, now: datetime
) -> None:
    if ctx.indexes is None:
        return
    for ref, outcome in result.credentials.items():
        credential = _one(ctx.indexes.credentials.get(ref, ()))
        if credential is None:
            continue
        raw = credential.status.model_dump(mode="json", by_alias=True) if credential.status else {}
        generation = credential.metadata.generation
        secret_resolved = compile.ConditionContent(
            "SecretResolved",
            "True" if outcome.reason == "Ready" else "False",
            "Resolved" if outcome.reason == "Ready" else outcome.reason,
            "the credential Secret is readable" if outcome.reason == "Ready" else outcome.message,
        )
        ready = compile.ConditionContent(
            "Ready", "True" if outcome.ready else "False", outcome.reason, outcome.message
        )
        desired = {
            "conditions": build_conditions(
                [ready, secret_resolved], raw.get("conditions") or [], generation, now
            ),
            "observedGeneration": generation,
            "models": outcome.models[: api.LIST_MAX],
        }
        await _patch_status(ctx, kube.PROVIDERCREDENTIALS, ref, raw, desired)


async def write_policy_statuses(
    ctx: ReconcileContext, snapshot: Snapshot, result: compile.CompileResult, now: datetime
) -> None:
    for policy in snapshot.policies:
        outcome = result.policies.get(policy.metadata.name)
        if outcome is None:
            continue
        raw = policy.status.model_dump(mode="json", by_alias=True, exclude_none=True) if policy.status else {}
        generation = policy.metadata.generation
        count = len(outcome.selected_keys)
        ready = compile.ConditionContent("Ready", "True", "Applied", f"selects {count} VirtualKey(s)")
        desired = {
            "conditions": build_conditions([ready], raw.get("conditions") or [], generation, now),
            "observedGeneration": generation,
            "selectedKeys": count,
        }
        await _patch_status(ctx, kube.LLMPOLICIES, ("", policy.metadata.name), raw, desired)
