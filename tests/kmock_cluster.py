"""A Kubernetes API for integration tests: kmock's emulator, patched to behave like an API server.

Used by the operator and kubesource tests and the propagation bench (fixtures registered in
conftest.py). kmock's emulator stores objects verbatim; a real API server stamps metadata. This
subclass fills what kopf and our clients rely on: `metadata.namespace` from the URL, `uid`,
`creationTimestamp`, `generateName`, a `resourceVersion` bumped on every write and a `generation`
bumped on spec changes. It can also cut watch streams (`drop_watches`) or end them with
410 Gone (`expire_watches`) to exercise reconnects and relists.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import kopf
import pytest_asyncio
from kmock._internal import enums, rendering

GROUP_VERSION = "llmkeys.io/v1alpha1"
VIRTUALKEYS = "llmkeys.io/v1alpha1/virtualkeys"
POLICIES = "llmkeys.io/v1alpha1/llmpolicies"
CREDENTIALS = "llmkeys.io/v1alpha1/providercredentials"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
LEASES = "coordination.k8s.io/v1/leases"

# Sentinel watch events put on kmock's per-resource bus; `_serve_watch` turns them into stream ends.
_DROP = "LLMKEYS-TEST-DROP"
_GONE = "LLMKEYS-TEST-GONE"
_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?")
_ALL_VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


class LlmkeysKubernetesEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the metadata stamping a real API server does (see module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self._namespaces: dict[str, dict[str, Any]] = {}
        self._namespace_watchers: list[asyncio.Queue[dict[str, Any]]] = []

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser cannot read /api/v1/namespaces[/name]: serve Namespaces here.
        match = _NAMESPACE_PATH.fullmatch(raw_request.path)
        if match is not None and raw_request.method == "GET":
            return await self._serve_namespaces(raw_request, match.group(1))
        return await super().__call__(raw_request)

    async def set_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """Create or relabel a Namespace (watchers see ADDED or MODIFIED)."""
        kind = "MODIFIED" if name in self._namespaces else "ADDED"
        all_labels = {"kubernetes.io/metadata.name": name, **(labels or {})}
        self._namespaces[name] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "resourceVersion": str(next(self._versions)),
                "labels": all_labels,
            },
        }
        for queue in list(self._namespace_watchers):
            queue.put_nowait({"type": kind, "object": self._namespaces[name]})

    async def _serve_namespaces(
        self, raw_request: aiohttp.web.BaseRequest, name: str | None
    ) -> aiohttp.web.StreamResponse:
        if name:
            if name not in self._namespaces:
                return aiohttp.web.json_response(
                    {"kind": "Status", "code": 404, "reason": "NotFound"}, status=404
                )
            return aiohttp.web.json_response(self._namespaces[name])
        if raw_request.query.get("watch") != "true":
            return aiohttp.web.json_response(
                {
                    "kind": "NamespaceList",
                    "metadata": {"resourceVersion": "1"},
                    "items": list(self._namespaces.values()),
                }
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._namespace_watchers.append(queue)
        try:
            for obj in list(self._namespaces.values()):
                await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            while raw_request.transport is not None and not raw_request.transport.is_closing():
                try:
                    event = await asyncio.wait_for(queue.get(), 0.5)
                except TimeoutError:
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._namespace_watchers.remove(queue)
        return response

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None:
            if request.action == enums.action.CREATE and isinstance(request.data, dict):
                self._stamp_create(request)
            elif request.action == enums.action.UPDATE and request.name is not None:
                self._stamp_update(request)
        return await super()._handle(request)

    def _stamp_create(self, request: rendering.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["resourceVersion"] = str(next(self._versions))
        if request.resource is not None and request.resource.group:
            meta["generation"] = 1

    def _stamp_update(self, request: rendering.Request) -> None:
        version = str(next(self._versions))
        key = (request.resource, request.namespace, request.name)
        current = self.objects[key] if key in self.objects else None  # noqa: SIM401  (no .get)
        generation = None
        if current is not None and not current.deleted:
            generation = dict(current.last.raw).get("metadata", {}).get("generation")
        touches_spec = False
        if isinstance(request.data, dict):
            touches_spec = "spec" in request.data and request.subresource != "status"
            request.data.setdefault("metadata", {})["resourceVersion"] = version
            if touches_spec and generation is not None:
                request.data["metadata"]["generation"] = generation + 1
        elif isinstance(request.data, list):
            touches_spec = any(str(op.get("path", "")).startswith("/spec") for op in request.data)
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            if touches_spec and generation is not None:
                request.data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and event.get("type") == _DROP:
                return
            if isinstance(event, dict) and event.get("type") == _GONE:
                yield {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": "Expired",
                        "code": 410,
                        "message": "too old resource version",
                    },
                }
                return
            yield event

    async def drop_watches(self, resource: str, namespace: str) -> None:
        """End every open watch stream of `resource` in `namespace` (clients must reconnect)."""
        await self._sentinel(resource, namespace, _DROP)

    async def expire_watches(self, resource: str, namespace: str) -> None:
        """Send 410 Gone to every open watch of `resource` in `namespace` (clients must relist)."""
        await self._sentinel(resource, namespace, _GONE)

    async def _sentinel(self, resource: str, namespace: str, kind: str) -> None:
        event = {"type": kind, "object": {"metadata": {"namespace": namespace, "name": ""}}}
        await self._buses[kmock.resource(resource)].put(event)

    def live_objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Raw bodies of the objects of `resource` that exist now (soft-deleted ones skipped)."""
        wanted = kmock.resource(resource)
        found = []
        for (res, ns, _name), obj in list(self.objects.items()):
            if res == wanted and (namespace is None or ns == namespace) and not obj.deleted:
                found.append(json.loads(json.dumps(obj.raw)))
        return found

    def live_object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: dict[str, Any] = json.loads(json.dumps(self.objects[key].raw))
        return raw


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    """Make the llmkeys CRDs and the core resources we use discoverable (kopf needs list/watch/patch)."""
    crd = {"verbs": _ALL_VERBS, "subresources": {"status"}, "categories": {"llmkeys"}}
    emulator.resources[VIRTUALKEYS] = kmock.ResourceInfo(
        kind="VirtualKey", singular="virtualkey", namespaced=True, shortnames={"vk"}, **crd
    )
    emulator.resources[CREDENTIALS] = kmock.ResourceInfo(
        kind="ProviderCredential", singular="providercredential", namespaced=True, shortnames={"pcred"}, **crd
    )
    emulator.resources[POLICIES] = kmock.ResourceInfo(
        kind="LLMPolicy", singular="llmpolicy", namespaced=False, shortnames={"llmpol"}, **crd
    )
    emulator.resources[SECRETS] = kmock.ResourceInfo(
        kind="Secret", singular="secret", namespaced=True, verbs=_ALL_VERBS
    )
    emulator.resources[EVENTS] = kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs=_ALL_VERBS
    )
    emulator.resources[LEASES] = kmock.ResourceInfo(
        kind="Lease", singular="lease", namespaced=True, verbs=_ALL_VERBS
    )
    emulator.resources[NAMESPACES] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs={"list", "watch", "get"}
    )


def _resource_path(resource: str, namespace: str | None, name: str | None = None) -> str:
    group_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class ClusterClient:
    """What `kubectl apply/patch/delete` would do, over real HTTP against the emulator."""

    def __init__(self, emulator: LlmkeysKubernetesEmulator, session: aiohttp.ClientSession) -> None:
        self.emulator = emulator
        self._session = session
        self._base = str(emulator.url)

    async def create(self, resource: str, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body.get("metadata", {}).get("namespace")
        async with self._session.post(self._base + _resource_path(resource, namespace), json=body) as resp:
            assert resp.status < 300, await resp.text()
            created: dict[str, Any] = await resp.json()
            return created

    async def patch(
        self, resource: str, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"}
        url = self._base + _resource_path(resource, namespace, name)
        async with self._session.patch(url, json=patch, headers=headers) as resp:
            assert resp.status < 300, await resp.text()
            patched: dict[str, Any] = await resp.json()
            return patched

    async def delete(self, resource: str, namespace: str | None, name: str) -> None:
        async with self._session.delete(self._base + _resource_path(resource, namespace, name)) as resp:
            assert resp.status < 300, await resp.text()

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.emulator.live_object(resource, namespace, name)

    async def wait_for(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        predicate: Callable[[dict[str, Any] | None], bool],
        *,
        timeout: float = 30.0,
        what: str = "",
    ) -> dict[str, Any] | None:
        """Poll the stored object until `predicate` holds (generous timeout: the machine is shared)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        obj = self.get(resource, namespace, name)
        while not predicate(obj):
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what or name}: last seen {obj!r}")
            await asyncio.sleep(0.05)
            obj = self.get(resource, namespace, name)
        return obj


def condition(obj: Mapping[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """The condition `type_` of an object's status, if any."""
    if not obj:
        return None
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


class OperatorThread:
    """The real kopf operator, in its own thread and event loop (kopf's shutdown would otherwise
    stall the test's loop), talking to the emulator over HTTP."""

    def __init__(self, run: Callable[[threading.Event, threading.Event], None]) -> None:
        self._run = run
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="kopf-operator", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            self._run(self._stop, self._ready)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    # Waiting happens off the event loop: the emulator serves the operator from the test's loop.
    async def start(self, timeout: float = 30.0, *, wait_ready: bool = True) -> None:
        self._thread.start()
        if not wait_ready:
            return
        if not await asyncio.to_thread(self._ready.wait, timeout) and self.error is None:
            raise AssertionError("the operator did not become ready")
        if self.error is not None:
            raise AssertionError("the operator failed to start") from self.error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, timeout)
        assert not self._thread.is_alive(), "the operator did not stop"
        if self.error is not None:
            raise AssertionError("the operator crashed") from self.error


def kopf_login(url: str) -> kopf.ConnectionInfo:
    """Connection info for the emulator (plain HTTP, no credentials)."""
    return kopf.ConnectionInfo(server=url, insecure=True)


@pytest_asyncio.fixture
async def kube_cluster() -> AsyncIterator[LlmkeysKubernetesEmulator]:
    """A fresh emulated cluster on a free loopback port; fails the test if it saw server errors."""
    async with LlmkeysKubernetesEmulator() as emulator, kmock.Server(emulator):
        declare_resources(emulator)
        yield emulator
        # 404 and 409 are ordinary API answers (a GET of a missing object, a create race), not failures.
        errors = [e for e in emulator.errors if not isinstance(e, kmock.KubernetesError) or e.status >= 500]
    assert not errors, f"the emulator failed on requests: {errors!r}"


@pytest_asyncio.fixture
async def cluster_client(kube_cluster: LlmkeysKubernetesEmulator) -> AsyncIterator[ClusterClient]:
    async with aiohttp.ClientSession() as session:
        yield ClusterClient(kube_cluster, session)


@pytest_asyncio.fixture
async def operator_threads() -> AsyncIterator[list[OperatorThread]]:
    """Collects operator threads a test starts and stops any still running at teardown."""
    threads: list[OperatorThread] = []
    yield threads
    for thread in threads:
        if thread.alive:
            await thread.stop()
        elif thread.error is not None:
            raise AssertionError("an operator crashed during the test") from thread.error


GATEWAY_NAMESPACE = "llmkeys"


def operator_settings(**overrides: Any) -> Any:
    """Operator settings for tests: quick debounce and leases, no liveness port."""
    from llmkeys_operator import settings

    values: dict[str, Any] = {
        "namespace": GATEWAY_NAMESPACE,
        "proxy_url": "http://127.0.0.1:9",
        "liveness_port": 0,
        "compile_debounce_s": 0.05,
        "lease_duration_s": 3.0,
        "renew_deadline_s": 2.0,
        "retry_period_s": 0.5,
        "event_min_interval_s": 0.0,
        **overrides,
    }
    return settings.OperatorSettings(**values)


def tweak_kopf_for_emulator(config: kopf.OperatorSettings) -> None:
    """What kopf needs to run against the emulator (see /work/shared/KMOCK.md)."""
    config.scanning.disabled = True  # listing namespaces for scanning is not needed
    config.watching.server_timeout = None
    config.watching.client_timeout = None
    config.networking.error_backoffs = [0.1, 0.2, 0.5]


async def start_operator(
    url: str, settings: Any, *, identity: str | None = None, wait_ready: bool = True
) -> OperatorThread:
    """The real operator (`runner.serve`) in its own thread, logged in to the emulator at `url`."""
    from llmkeys_operator import runner

    async def connect() -> kopf.ConnectionInfo:
        return kopf_login(url)

    def run(stop: threading.Event, ready: threading.Event) -> None:
        asyncio.run(
            runner.serve(
                settings,
                connect=connect,
                stop_flag=stop,
                ready_flag=ready,
                tweak=tweak_kopf_for_emulator,
                identity=identity,
            )
        )

    thread = OperatorThread(run)
    await thread.start(wait_ready=wait_ready)
    return thread
