"""kopf wiring of the operator: decorators only, each delegating to a plain function.

Registered into `REGISTRY` (not kopf's global one), which `runner` passes to `kopf.operator`.
Indexes hold what `compile` needs (kopf fills them all before any other handler runs, so the
first publish after a restart sees every resource). Change handlers reconcile key Secrets;
every event asks the publisher for a (debounced) recompile. No handler needs a finalizer:
deletion is seen through the watch, and the key Secret goes with its VirtualKey (ownerReference).
"""

from __future__ import annotations

from typing import Any

import kopf

from llmkeys_operator import keysecret, reconcile, runtime
from llmkeys_proxy import config

REGISTRY = kopf.OperatorRegistry()

VIRTUALKEYS = ("llmkeys.io", "v1alpha1", "virtualkeys")
POLICIES = ("llmkeys.io", "v1alpha1", "llmpolicies")
CREDENTIALS = ("llmkeys.io", "v1alpha1", "providercredentials")
SECRETS = ("", "v1", "secrets")
NAMESPACES = ("", "v1", "namespaces")
KEY_SECRET_LABELS: dict[str, Any] = {
    keysecret.LABEL_MANAGED_BY: keysecret.MANAGED_BY,
    keysecret.LABEL_SECRET: keysecret.SECRET_KEY,
    keysecret.LABEL_VIRTUALKEY: kopf.PRESENT,
}
#: The server-side selector of the one Secret watch (runner sets it in kopf's settings): every
#: handler below sees only Secrets carrying `llmkeys.io/secret`.
SECRET_WATCH_SELECTOR = keysecret.LABEL_SECRET


def _in_gateway_namespace(namespace: str | None, memo: Any, **_: Any) -> bool:
    return namespace == runtime.runtime_of(memo).settings.namespace


def _is_credential_secret(namespace: str | None, labels: Any, body: kopf.Body, memo: Any, **_: Any) -> bool:
    return _in_gateway_namespace(namespace, memo) and reconcile.may_hold_credential(labels, body.get("type"))


# ------------------------------------------------------------------------------------ activities


@kopf.on.login(registry=REGISTRY)
async def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    return await runtime.runtime_of(memo).connect()


@kopf.on.startup(registry=REGISTRY)
async def startup(memo: Any, **kwargs: Any) -> None:
    await runtime.start(runtime.runtime_of(memo), kwargs)


@kopf.on.cleanup(registry=REGISTRY)
async def cleanup(memo: Any, **_: Any) -> None:
    await runtime.stop(runtime.runtime_of(memo))


@kopf.on.probe(id="publishes", registry=REGISTRY)
def publishes(memo: Any, **_: Any) -> int:
    return runtime.runtime_of(memo).context().publishes


# --------------------------------------------------------------------------------------- indexes


@kopf.index(*VIRTUALKEYS, registry=REGISTRY)
def virtualkeys_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): reconcile.index_virtual_key(body)}


@kopf.index(*POLICIES, registry=REGISTRY)
def policies_index(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    policy = reconcile.parse_policy(body)
    return {name: policy} if policy is not None else {}


@kopf.index(*CREDENTIALS, registry=REGISTRY)
def credentials_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    credential = reconcile.parse_credential(body)
    return {(namespace or "", name): credential} if credential is not None else {}


@kopf.index(*SECRETS, labels=KEY_SECRET_LABELS, registry=REGISTRY)
def key_secrets_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): reconcile.index_key_secret(body)}


@kopf.index(*SECRETS, when=_is_credential_secret, registry=REGISTRY)
def gateway_secrets_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace or "", name): reconcile.decode_secret_data(body)}


@kopf.index(
    *SECRETS, labels={config.CONFIG_LABEL: kopf.PRESENT}, when=_in_gateway_namespace, registry=REGISTRY
)
def config_secrets_index(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    content = reconcile.config_secret_content(body)
    return {name: content} if content is not None else {}


@kopf.index(*NAMESPACES, registry=REGISTRY)
def namespaces_index(name: str, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
    return {name: dict(labels)}


# ----------------------------------------------------------------------------------- VirtualKeys


@kopf.on.resume(*VIRTUALKEYS, registry=REGISTRY)
@kopf.on.create(*VIRTUALKEYS, registry=REGISTRY)
@kopf.on.update(*VIRTUALKEYS, registry=REGISTRY)
async def virtualkey_changed(body: kopf.Body, memo: Any, **_: Any) -> None:
    await reconcile.reconcile_virtual_key(runtime.runtime_of(memo).context(), body)


@kopf.on.event(*VIRTUALKEYS, registry=REGISTRY)
def virtualkey_event(type: str, namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    reconcile.on_virtual_key_event(runtime.runtime_of(memo).context(), type, (namespace or "", name))


@kopf.on.event(*SECRETS, labels=KEY_SECRET_LABELS, registry=REGISTRY)
async def key_secret_event(type: str, body: kopf.Body, memo: Any, **_: Any) -> None:
    await reconcile.on_key_secret_event(runtime.runtime_of(memo).context(), type, body)


# ------------------------------------------------------------------- everything else: republish


@kopf.on.event(*POLICIES, registry=REGISTRY)
@kopf.on.event(*CREDENTIALS, registry=REGISTRY)
@kopf.on.event(*NAMESPACES, registry=REGISTRY)
def inputs_changed(memo: Any, **_: Any) -> None:
    runtime.runtime_of(memo).context().request_publish()


@kopf.on.event(*SECRETS, when=_in_gateway_namespace, registry=REGISTRY)
def gateway_secret_changed(memo: Any, **_: Any) -> None:
    runtime.runtime_of(memo).context().request_publish()
