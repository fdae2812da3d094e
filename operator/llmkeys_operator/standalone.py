"""Standalone mode (`llmkeys serve`): a folder of manifests -> compiled config -> the proxy, no cluster.

The same manifests a GitOps repo holds (VirtualKey, LLMPolicy, ProviderCredential, Secret) are
compiled by the same `compile.compile_proxy_config` the operator runs. Keys are issued once and kept
in a local state dir that mirrors what the operator puts into a key Secret:
`<state-dir>/keys/<namespace>/<name>.env` (mode 0600) with `OPENAI_API_KEY=...`, `OPENAI_BASE_URL=...`
and the other SDK variables. Several `serve` processes sharing one state dir (say, behind one
Redis) keep the same keys: issuing happens under an exclusive file lock and never overwrites a key.
The compiled config goes to `<state-dir>/config/` (the proxy's `DirectorySource` layout) and is
rewritten whenever a manifest changes, so edits take effect within about a second.
With `--workers N` (N > 1, Redis required) this process compiles and watches, and N worker processes
serve the config dir on one port (SO_REUSEPORT), each reloading it on change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import multiprocessing
import multiprocessing.queues
import os
import pathlib
import queue
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pydantic
import yaml

from llmkeys_operator import api, compile, keysecret, statusfiles
from llmkeys_proxy import config, keys, redaction, sources

logger = logging.getLogger("llmkeys.standalone")

#: Namespace of manifests that name none, and the gateway namespace of standalone mode.
DEFAULT_NAMESPACE = compile.DEFAULT_NAMESPACE
_ISSUED_AT_PREFIX = "# issued-at: "
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
_WORKER_STOP_TIMEOUT_S = 45.0
# Kubernetes object names (RFC 1123 subdomain) and namespaces (RFC 1123 label): what the API server
# accepts, and what keeps every file standalone mode writes inside the state dir.
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def name_problem(name: object, namespace: object) -> str | None:
    """Why `name` / `namespace` are not valid Kubernetes names, or None."""
    if not isinstance(name, str) or len(name) > 253 or not _NAME_RE.fullmatch(name):
        return f"metadata.name {str(name)[:80]!r} is not a Kubernetes name (lower-case RFC 1123 subdomain)"
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not _NAMESPACE_RE.fullmatch(namespace)
    ):
        return f"metadata.namespace {str(namespace)[:80]!r} is not a Kubernetes namespace (RFC 1123 label)"
    return None


# --------------------------------------------------------------------------------- manifests


@dataclasses.dataclass
class Manifests:
    """What a manifests folder holds, parsed; `problems` says what was skipped and why."""

    virtual_keys: list[api.VirtualKey] = dataclasses.field(default_factory=list)
    policies: list[api.LLMPolicy] = dataclasses.field(default_factory=list)
    credentials: list[api.ProviderCredential] = dataclasses.field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, str]] = dataclasses.field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)


_KINDS: dict[str, type[api.VirtualKey] | type[api.LLMPolicy] | type[api.ProviderCredential]] = {
    "VirtualKey": api.VirtualKey,
    "LLMPolicy": api.LLMPolicy,
    "ProviderCredential": api.ProviderCredential,
}


def manifest_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """Every manifest file below `directory`, sorted (kustomization files are not manifests)."""
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file()
        and path.suffix in _MANIFEST_SUFFIXES
        and not path.name.startswith((".", "kustomization"))
    )


def load_manifests(directory: pathlib.Path) -> Manifests:
    """Parse every document of every manifest file; invalid documents are reported, not fatal."""
    result = Manifests()
    for path in manifest_files(directory):
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            result.problems.append(f"{path}: not valid YAML: {exc}")
            continue
        for index, document in enumerate(documents):
            if document is None:
                continue
            _add_document(result, path, index, document)
    return result


def _add_document(result: Manifests, path: pathlib.Path, index: int, document: Any) -> None:
    where = f"{path} (document {index + 1})"
    if not isinstance(document, dict):
        result.problems.append(f"{where}: not a Kubernetes object")
        return
    kind = document.get("kind")
    metadata = document.get("metadata") or {}
    name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
    if kind == "Secret":
        _add_secret(result, where, document)
        return
    if kind == "Namespace":
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            result.namespace_labels[metadata["name"]] = dict(metadata.get("labels") or {})
        return
    model = _KINDS.get(str(kind))
    if model is None:
        return  # Deployments, kustomizations and the like belong to the cluster, not to us
    problem = name_problem(
        metadata.get("name") if isinstance(metadata, dict) else None,
        metadata.get("namespace") if isinstance(metadata, dict) and model is not api.LLMPolicy else None,
    )
    if problem:
        result.problems.append(f"{where}: {kind} is invalid: {problem}")
        return
    body = dict(document)
    if model is not api.LLMPolicy:
        body["metadata"] = {"namespace": DEFAULT_NAMESPACE, **metadata}
    try:
        parsed = model.model_validate(body)
    except pydantic.ValidationError as exc:
        result.problems.append(
            f"{where}: {kind} {name!r} is invalid: {config.summarise_validation_error(exc)}"
        )
        return
    if isinstance(parsed, api.VirtualKey):
        result.virtual_keys.append(parsed)
    elif isinstance(parsed, api.LLMPolicy):
        result.policies.append(parsed)
    else:
        result.credentials.append(parsed)


def _add_secret(result: Manifests, where: str, document: Mapping[str, Any]) -> None:
    import base64
    import binascii

    metadata = document.get("metadata") or {}
    name = metadata.get("name")
    if not isinstance(name, str):
        result.problems.append(f"{where}: Secret without metadata.name")
        return
    problem = name_problem(name, metadata.get("namespace"))
    if problem:
        result.problems.append(f"{where}: Secret is invalid: {problem}")
        return
    namespace = str(metadata.get("namespace") or DEFAULT_NAMESPACE)
    data: dict[str, str] = {}
    for key, value in (document.get("data") or {}).items():
        try:
            data[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            # Never echo the value: it is a credential.
            result.problems.append(f"{where}: Secret {name!r} key {key!r} is not valid base64 UTF-8")
    for key, value in (document.get("stringData") or {}).items():
        data[str(key)] = str(value)
    result.secrets[(namespace, name)] = data


# --------------------------------------------------------------------------------- state dir


class StateDir:
    """Keys issued in standalone mode, stored like the operator's key Secrets (env files, 0600)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.keys_dir = root / "keys"
        self.config_dir = root / "config"
        #: Resources with their status, as `llmkeys report --state-dir` reads them (`statusfiles`).
        self.status_dir = root / "status"

    def prepare(self) -> None:
        for directory in (self.root, self.keys_dir, self.config_dir):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)

    def env_path(self, namespace: str, name: str) -> pathlib.Path:
        """Where a key's env file lives; ValueError for names that are not Kubernetes names (they
        are refused when manifests load; this keeps any other caller inside the state dir)."""
        if name_problem(name, namespace):
            raise ValueError(f"not a Kubernetes name: {namespace[:80]!r}/{name[:80]!r}")
        return self.keys_dir / namespace / f"{name}.env"

    def remove_revoked(self, current: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """Delete the key files of VirtualKeys no longer in the manifests: their keys are revoked,
        and a VirtualKey created again under the same name gets a new secret. Under `locked()`."""
        removed: list[tuple[str, str]] = []
        if not self.keys_dir.is_dir():
            return removed
        for namespace_dir in sorted(self.keys_dir.iterdir()):
            if not namespace_dir.is_dir():
                continue
            for path in sorted(namespace_dir.glob("*.env")):
                if (namespace_dir.name, path.stem) not in current:
                    path.unlink(missing_ok=True)
                    removed.append((namespace_dir.name, path.stem))
            if not any(namespace_dir.iterdir()):
                shutil.rmtree(namespace_dir, ignore_errors=True)
        return removed

    def stored_usage(self, namespace: str, name: str) -> api.UsageByPeriod | None:
        """The usage the status files last showed for a VirtualKey (what its counters are re-seeded
        from when the limiter lost them: Redis or `serve` restarted)."""
        usage = statusfiles.shown_usage(self.status_dir, namespace, name)
        if usage is None:
            return None
        try:
            return api.UsageByPeriod.model_validate(usage)
        except pydantic.ValidationError:
            logger.warning("status file of %s/%s holds unreadable usage; not seeded from it", namespace, name)
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock across processes sharing this state dir."""
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read_key(self, namespace: str, name: str) -> keysecret.KeyMaterial | None:
        """The stored key (or keyless key id) and its issue time, or None when none was issued (or
        the file is damaged)."""
        path = self.env_path(namespace, name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        values: dict[str, str] = {}
        issued_at: datetime | None = None
        for line in text.splitlines():
            if line.startswith(_ISSUED_AT_PREFIX):
                with contextlib.suppress(ValueError):
                    issued_at = datetime.fromisoformat(line[len(_ISSUED_AT_PREFIX) :].strip())
            elif "=" in line and not line.startswith("#"):
                env, value = line.split("=", 1)
                values[env] = value.strip()
        issued_at = issued_at or datetime.fromtimestamp(path.stat().st_mtime, UTC)
        key = values.get("LLMKEYS_API_KEY")
        if key is not None and keys.parse_key(key) is not None:
            return keysecret.KeyMaterial(key=key, issued_at=issued_at)
        key_id = values.get("LLMKEYS_KEY_ID", "")
        if values.get("LLMKEYS_AUTH") == keysecret.AUTH_WORKLOAD_TOKEN and keys.is_key_id(key_id):
            return keysecret.KeyMaterial(key=None, issued_at=issued_at, keyless_id=key_id)
        logger.warning("state file %s holds no valid key; issuing a new one", path)
        return None

    def write_key(self, namespace: str, name: str, material: keysecret.KeyMaterial, proxy_url: str) -> None:
        path = self.env_path(namespace, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        entries = keysecret.secret_entries(material, proxy_url, keysecret.DEFAULT_AUDIENCE)
        what = (
            "virtual key for VirtualKey {}/{} (standalone mode). Keep it secret."
            if material.key is not None
            else "keyless VirtualKey {}/{} (standalone mode): no secret here, present a workload token."
        )
        lines = [
            "# llmkeys " + what.format(namespace, name),
            f"{_ISSUED_AT_PREFIX}{material.issued_at.isoformat()}",
        ]
        lines += [f"{env}={value}" for env, value in entries.items() if env != keysecret.API_KEY]
        tmp = path.with_suffix(".env.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(tmp, path)

    def ensure_keys(
        self, virtual_keys: list[api.VirtualKey], proxy_url: str, now: datetime
    ) -> tuple[dict[tuple[str, str], compile.IssuedKey], list[tuple[str, str]]]:
        """Issue a key for every VirtualKey that has none yet; return all issued keys and the new ones.
        Existing keys are rewritten only to refresh the proxy URL, never replaced; a key whose
        staticKey changed gets a static key under its id, or loses it (keyless)."""
        issued: dict[tuple[str, str], compile.IssuedKey] = {}
        created: list[tuple[str, str]] = []
        with self.locked():
            current = {(vk.metadata.namespace or DEFAULT_NAMESPACE, vk.metadata.name) for vk in virtual_keys}
            for namespace, name in self.remove_revoked(current):
                logger.info(
                    "VirtualKey %s/%s is gone: its key is revoked, its key file removed", namespace, name
                )
            for vk in virtual_keys:
                namespace = vk.metadata.namespace or DEFAULT_NAMESPACE
                name = vk.metadata.name
                material = self.read_key(namespace, name)
                static = vk.spec.static_key
                if material is None or static != (material.key is not None):
                    if material is None:
                        created.append((namespace, name))
                    material = keysecret.issue(now, material.key_id if material else None, static=static)
                    self.write_key(namespace, name, material, proxy_url)
                elif self._stored_url(namespace, name) != proxy_url:
                    self.write_key(namespace, name, material, proxy_url)
                issued[(namespace, name)] = compile.IssuedKey(
                    key_id=material.key_id, hashes=material.hashes(now), issued_at=material.issued_at
                )
        return issued, created

    def _stored_url(self, namespace: str, name: str) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            for line in self.env_path(namespace, name).read_text(encoding="utf-8").splitlines():
                if line.startswith("LLMKEYS_BASE_URL="):
                    return line.split("=", 1)[1].strip()
        return None


# ---------------------------------------------------------------------------------- compiling


@dataclasses.dataclass
class CompiledState:
    """One compilation of the manifests folder."""

    manifests: Manifests
    result: compile.CompileResult
    created: list[tuple[str, str]]
    issued: dict[tuple[str, str], compile.IssuedKey] = dataclasses.field(default_factory=dict)


def compile_folder(
    manifests_dir: pathlib.Path, state: StateDir, proxy_url: str, now: datetime
) -> CompiledState:
    """Load, issue missing keys, compile, and write the proxy config dir (atomically per file)."""
    manifests = load_manifests(manifests_dir)
    issued, created = state.ensure_keys(manifests.virtual_keys, proxy_url, now)
    result = compile.compile_proxy_config(
        [_with_stored_usage(vk, state) for vk in manifests.virtual_keys],
        manifests.policies,
        manifests.credentials,
        manifests.secrets,
        issued,
        now,
        gateway_namespace=DEFAULT_NAMESPACE,
        namespace_labels=manifests.namespace_labels,
        # No API server, no requester: the folder is trusted, approvals come from the manifest.
        manifest_approvals=True,
    )
    with state.locked():
        sources.write_config_dir(state.config_dir, result.config)
    return CompiledState(manifests=manifests, result=result, created=created, issued=issued)


def _with_stored_usage(vk: api.VirtualKey, state: StateDir) -> api.VirtualKey:
    """`vk` with the usage its status file shows as `status.usage`: the compiler turns it into the
    key's seeds, so a cap holds across a Redis or `serve` restart as it does in a cluster."""
    usage = state.stored_usage(vk.metadata.namespace or DEFAULT_NAMESPACE, vk.metadata.name)
    if usage is None:
        return vk
    return vk.model_copy(update={"status": api.VirtualKeyStatus(usage=usage)})


def describe(compiled: CompiledState, state: StateDir) -> list[str]:
    """Lines a person reads at start-up: each key, its state, and where its env file is."""
    lines = [f"  ! {problem}" for problem in compiled.manifests.problems]
    for (namespace, name), outcome in sorted(compiled.result.keys.items()):
        path = state.env_path(namespace, name)
        lines.append(f"  {namespace}/{name}: {outcome.reason} -> {path}")
        if not outcome.ready and outcome.message:
            lines.append(f"      {outcome.message}")
    for (namespace, name), cred in sorted(compiled.result.credentials.items()):
        if not cred.ready:
            lines.append(f"  ! ProviderCredential {namespace}/{name}: {cred.reason}: {cred.message}")
    return lines


def _fingerprint(directory: pathlib.Path) -> tuple[tuple[str, int, int], ...]:
    entries = []
    for path in manifest_files(directory):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            entries.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(entries)


async def watch_manifests(
    manifests_dir: pathlib.Path,
    state: StateDir,
    proxy_url: str,
    stop: asyncio.Event,
    interval_s: float = 0.25,
    on_compiled: Callable[[CompiledState], None] | None = None,
) -> None:
    """Recompile whenever a manifest file changes; the proxy's DirectorySource picks the result up.
    Expiry needs no recompile: the proxy checks `expires_at` on every request."""
    seen = _fingerprint(manifests_dir)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        current = _fingerprint(manifests_dir)
        if current == seen:
            continue
        seen = current
        try:
            compiled = await asyncio.to_thread(
                compile_folder, manifests_dir, state, proxy_url, datetime.now(UTC)
            )
        except Exception:
            logger.exception("recompiling %s failed; the proxy keeps the previous config", manifests_dir)
            continue
        logger.info("manifests changed: recompiled %d keys", len(compiled.result.keys))
        if on_compiled is not None:
            on_compiled(compiled)
        for namespace, name in compiled.created:
            logger.info("issued a key for %s/%s -> %s", namespace, name, state.env_path(namespace, name))


# --------------------------------------------------------------------------------------- serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifests", required=True, type=pathlib.Path, help="folder of manifests")
    parser.add_argument("--state-dir", type=pathlib.Path, default=pathlib.Path(".llmkeys"))
    parser.add_argument("--host", default=os.environ.get("LLMKEYS_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMKEYS_PORT", "8080")))
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LLMKEYS_REDIS_URL", ""),
        help="share limits with other processes through Redis (default: in-process limiter)",
    )
    parser.add_argument("--public-url", default=None, help="proxy URL written into the key env files")
    parser.add_argument(
        "--status-interval",
        type=float,
        default=statusfiles.DEFAULT_INTERVAL_S,
        help="seconds between writes of <state-dir>/status/ (usage for `llmkeys report --state-dir`)",
    )
    parser.add_argument("--log-level", default=os.environ.get("LLMKEYS_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("LLMKEYS_WORKERS", "1")),
        help="proxy processes sharing the port (SO_REUSEPORT); more than one needs --redis-url",
    )
    parser.add_argument(
        "--tls-cert-file",
        default=os.environ.get("LLMKEYS_TLS_CERT_FILE") or None,
        help="PEM certificate chain: serve HTTPS (with --tls-key-file)",
    )
    parser.add_argument(
        "--tls-key-file",
        default=os.environ.get("LLMKEYS_TLS_KEY_FILE") or None,
        help="PEM private key of --tls-cert-file",
    )


def public_url(host: str, port: int, explicit: str | None, *, tls: bool = False) -> str:
    if explicit:
        return explicit.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What one `serve --workers` process needs (pickled to it: the Redis URL stays off command lines)."""

    config_dir: pathlib.Path
    host: str
    port: int
    redis_url: str = dataclasses.field(repr=False)
    log_level: str
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: The worker's own audit file chain (proxy-w<N>).
    audit_file_stream: str | None = None


def serve_worker(spec: WorkerSpec, ready: multiprocessing.queues.Queue[int]) -> None:
    """Body of one worker process: serve the compiled config dir until SIGTERM/SIGINT; puts its pid
    on the `ready` queue once listening."""
    logging.basicConfig(level=spec.log_level.upper(), format=_LOG_FORMAT)
    redaction.install()
    from llmkeys_proxy import server

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await server.serve_directory(
            config_dir=spec.config_dir,
            host=spec.host,
            port=spec.port,
            redis_url=spec.redis_url,
            stop=stop,
            on_ready=lambda: ready.put(os.getpid()),
            reuse_port=True,
            tls_cert_file=spec.tls_cert_file,
            tls_key_file=spec.tls_key_file,
            audit_file_stream=spec.audit_file_stream,
        )

    server.run_event_loop(main())


async def _serve_workers(
    spec: WorkerSpec, workers: int, stop: asyncio.Event, on_ready: Callable[[], None]
) -> int:
    """Run `workers` processes serving `spec` until `stop`; if one dies, stop the others and fail."""
    from llmkeys_proxy import server

    context = multiprocessing.get_context("spawn")  # no inherited event loop or locks
    ready_queue: multiprocessing.queues.Queue[int] = context.Queue()
    with server.shared_metrics_dir():
        children = [
            context.Process(
                target=serve_worker,
                args=(dataclasses.replace(spec, audit_file_stream=f"proxy-w{n}"), ready_queue),
                name=f"llmkeys-serve-{n}",
            )
            for n in range(workers)
        ]
        for child in children:
            child.start()
        waiting = workers
        failed = False
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                while waiting:
                    try:
                        ready_queue.get_nowait()
                    except queue.Empty:
                        break
                    waiting -= 1
                    if not waiting:
                        on_ready()
                dead = [child for child in children if not child.is_alive()]
                if dead and not stop.is_set():
                    logger.error(
                        "worker %s exited with %s; stopping the others", dead[0].name, dead[0].exitcode
                    )
                    failed = True
                    break
        finally:
            for child in children:
                if child.is_alive() and child.pid is not None:
                    os.kill(child.pid, signal.SIGTERM)
            for child in children:
                # In-flight requests get the proxy's graceful shutdown time, then the worker goes.
                await asyncio.to_thread(child.join, _WORKER_STOP_TIMEOUT_S)
                if child.is_alive():
                    child.kill()
                    await asyncio.to_thread(child.join)
            ready_queue.close()
            ready_queue.join_thread()
    return 1 if failed else 0


async def serve(
    args: argparse.Namespace,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_compiled: Callable[[CompiledState], None] | None = None,
) -> int:
    """Compile, then run the proxy on the compiled config until `stop` (or SIGINT/SIGTERM).
    `on_compiled` sees the first compilation (the demo reads which keys exist from it)."""
    from llmkeys_proxy import server  # the data plane is only loaded when serving

    manifests_dir: pathlib.Path = args.manifests
    workers: int = getattr(args, "workers", 1)
    tls_cert_file: str | None = getattr(args, "tls_cert_file", None)
    tls_key_file: str | None = getattr(args, "tls_key_file", None)
    problem = _check_serving_options(workers, args.redis_url, tls_cert_file, tls_key_file)
    if problem:
        print(f"llmkeys serve: {problem}", file=sys.stderr)
        return 2
    state = StateDir(args.state_dir)
    url = public_url(args.host, args.port, args.public_url, tls=bool(tls_cert_file))
    compiled = await asyncio.to_thread(_start, manifests_dir, state, url)
    if compiled is None:
        return 2
    if on_compiled is not None:
        on_compiled(compiled)

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    latest = [compiled]
    limiters: list[Any] = []
    if workers > 1:
        from llmkeys_proxy.limits import redis as redis_limits  # workers need Redis (checked above)

        limiters.append(redis_limits.RedisLimiter(args.redis_url))
    watcher = asyncio.create_task(
        watch_manifests(manifests_dir, state, url, stop, on_compiled=lambda new: latest.__setitem__(0, new))
    )
    status_writer = asyncio.create_task(
        statusfiles.run_status_writer(
            state.status_dir,
            lambda: latest[0],
            lambda: limiters[0] if limiters else None,
            stop,
            getattr(args, "status_interval", statusfiles.DEFAULT_INTERVAL_S),
        )
    )

    def listening() -> None:
        if ready is not None:
            ready.set()
        shown = f" ({workers} workers)" if workers > 1 else ""
        print(f"llmkeys proxy listening on {url}{shown} (OPENAI_BASE_URL={url}/v1)", flush=True)

    try:
        if workers > 1:
            spec = WorkerSpec(
                config_dir=state.config_dir,
                host=args.host,
                port=args.port,
                redis_url=args.redis_url,
                log_level=args.log_level,
                tls_cert_file=tls_cert_file,
                tls_key_file=tls_key_file,
            )
            return await _serve_workers(spec, workers, stop, listening)
        await server.serve_directory(
            config_dir=state.config_dir,
            host=args.host,
            port=args.port,
            redis_url=args.redis_url or None,
            stop=stop,
            on_ready=listening,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            on_limiter=limiters.append,
        )
    finally:
        stop.set()
        await watcher
        await status_writer
        if workers > 1:
            await limiters[0].close()
    return 0


def _check_serving_options(
    workers: int, redis_url: str, tls_cert_file: str | None, tls_key_file: str | None
) -> str | None:
    """What is wrong with the serving flags, in words, or None."""
    from llmkeys_proxy import tls

    if workers < 1:
        return "--workers must be at least 1"
    if workers > 1 and not redis_url:
        return (
            f"--workers {workers} needs --redis-url (or LLMKEYS_REDIS_URL): each worker process would "
            "otherwise count on its own, and every limit would admit up to that many times its value"
        )
    if bool(tls_cert_file) != bool(tls_key_file):
        return "--tls-cert-file and --tls-key-file go together: give both (HTTPS) or neither"
    if tls_cert_file and tls_key_file:
        try:
            tls.load_server_context(tls_cert_file, tls_key_file)
        except ValueError as exc:
            return str(exc)
    return None


def _start(manifests_dir: pathlib.Path, state: StateDir, url: str) -> CompiledState | None:
    """First compilation, with the start-up report a person reads."""
    if not manifests_dir.is_dir():
        print(f"llmkeys serve: --manifests {manifests_dir} is not a folder")
        return None
    state.prepare()
    compiled = compile_folder(manifests_dir, state, url, datetime.now(UTC))
    print(f"llmkeys standalone: {len(compiled.result.keys)} virtual keys from {manifests_dir}")
    for line in describe(compiled, state):
        print(line)
    return compiled


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT)
    redaction.install()
    from llmkeys_proxy import server

    outcome: list[int] = []

    async def main() -> None:
        outcome.append(await serve(args))

    server.run_event_loop(main())
    return outcome[0] if outcome else 1
