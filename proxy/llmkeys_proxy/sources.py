"""Where the proxy's compiled config comes from: the `ConfigSource` interface and its directory backend.

`app.create_app` subscribes to a source and swaps its routing snapshot on every published config.
Backends: `DirectorySource` here (standalone mode, tests), `StaticSource` (embedding, tests) and the
Kubernetes Secret watch in `kubesource.py`. A source keeps its last good config when a document
breaks and reports the error (`healthy`, `last_error`), which /readyz shows.

Directory layout read by `DirectorySource` (written by `write_config_dir`):

    <dir>/providers.json          one ProvidersDocument (required)
    <dir>/keys-<anything>.json    one KeysShard each (zero or more; `keys-<namespace>-<shard>.json`)

Other files are ignored, so editors' temp files do not matter; writers should replace files
atomically (write a temp file, then rename), as `write_config_dir` does.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import pathlib
from collections.abc import Callable

import pydantic

from llmkeys_proxy import config

logger = logging.getLogger("llmkeys.proxy.config")

PROVIDERS_FILE = "providers.json"
KEYS_FILE_PREFIX = "keys-"

Subscriber = Callable[[config.ProxyConfig], None]


class ConfigSource(abc.ABC):
    """A stream of `ProxyConfig` versions. Subclasses call `_publish` and `_fail`."""

    def __init__(self) -> None:
        self._current: config.ProxyConfig | None = None
        self._subscribers: list[Subscriber] = []
        self._last_error: str | None = None
        self._generation = 0
        self._loaded = asyncio.Event()

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin loading/watching; may return before the first config arrives (see `wait_loaded`)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop watching; the last config stays readable."""

    @property
    def current(self) -> config.ProxyConfig | None:
        """The last good config, or None before the first successful load."""
        return self._current

    @property
    def healthy(self) -> bool:
        """False while the latest attempt to read the source failed (the last good config is served)."""
        return self._last_error is None

    @property
    def last_error(self) -> str | None:
        """Why the latest read failed; never contains secret values."""
        return self._last_error

    @property
    def generation(self) -> int:
        """Counts published configs; 0 before the first one."""
        return self._generation

    def subscribe(self, callback: Subscriber) -> None:
        """Call `callback(config)` for every published config (at once if one is already there).
        Callbacks run on the event loop and must be quick."""
        self._subscribers.append(callback)
        if self._current is not None:
            callback(self._current)

    async def wait_loaded(self, within_s: float | None = None) -> bool:
        """True once a first config is published (False when `within_s` passes first)."""
        try:
            await asyncio.wait_for(self._loaded.wait(), within_s)
        except TimeoutError:
            return False
        return True

    def _publish(self, new: config.ProxyConfig) -> None:
        self._last_error = None
        if new == self._current:
            return
        self._current = new
        self._generation += 1
        self._loaded.set()
        for callback in self._subscribers:
            try:
                callback(new)
            except Exception:  # one broken subscriber must not stop the others
                logger.exception("config subscriber failed")

    def _fail(self, message: str) -> None:
        if message != self._last_error:
            logger.error("config source error (serving the last good config): %s", message)
        self._last_error = message


class StaticSource(ConfigSource):
    """A fixed config, optionally replaced by `set()`: for embedding and tests."""

    def __init__(self, initial: config.ProxyConfig | None = None) -> None:
        super().__init__()
        self._initial = initial

    async def start(self) -> None:
        if self._initial is not None:
            self._publish(self._initial)

    async def stop(self) -> None:
        return None

    def set(self, new: config.ProxyConfig) -> None:
        self._publish(new)


def load_config_dir(directory: pathlib.Path) -> config.ProxyConfig:
    """Read and merge the documents of `directory`; raises ValueError with a short reason."""
    providers_path = directory / PROVIDERS_FILE
    try:
        providers = config.ProvidersDocument.model_validate_json(providers_path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{providers_path} is missing") from None
    except pydantic.ValidationError as exc:
        raise ValueError(f"{PROVIDERS_FILE}: {config.summarise_validation_error(exc)}") from None
    shards: list[config.KeysShard] = []
    for path in sorted(directory.glob(f"{KEYS_FILE_PREFIX}*.json")):
        try:
            shards.append(config.KeysShard.model_validate_json(path.read_bytes()))
        except FileNotFoundError:
            continue  # removed between listing and reading; the next poll sees the new state
        except pydantic.ValidationError as exc:
            raise ValueError(f"{path.name}: {config.summarise_validation_error(exc)}") from None
    return config.ProxyConfig.merge(providers, shards)


def write_config_dir(directory: pathlib.Path, proxy_config: config.ProxyConfig) -> None:
    """Write `proxy_config` as documents `DirectorySource` reads, each file replaced atomically,
    and remove key shards that no longer exist. Files are 0600: the providers document holds
    real credentials."""
    directory.mkdir(parents=True, exist_ok=True)
    providers, shards = proxy_config.split()
    wanted: dict[str, bytes] = {PROVIDERS_FILE: providers.model_dump_json(indent=1).encode()}
    for shard in shards:
        wanted[f"{KEYS_FILE_PREFIX}{shard.namespace}-{shard.shard}.json"] = shard.model_dump_json(
            indent=1
        ).encode()
    # Keys first, providers last: a reader polling in between sees new keys with old providers,
    # never a providers document pointing at keys that are not there yet.
    for name in sorted(wanted, key=lambda n: n == PROVIDERS_FILE):
        _write_atomic(directory / name, wanted[name])
    for stale in directory.glob(f"{KEYS_FILE_PREFIX}*.json"):
        if stale.name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return  # unchanged: keep the mtime so readers do not reload for nothing
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class DirectorySource(ConfigSource):
    """Reads a directory of config documents and reloads when a file changes (polls mtimes)."""

    def __init__(self, directory: str | os.PathLike[str], interval_s: float = 0.5) -> None:
        super().__init__()
        self.directory = pathlib.Path(directory)
        self.interval_s = interval_s
        self._signature: tuple[tuple[str, int, int, int], ...] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.poll()
        self._task = asyncio.create_task(self._run(), name="llmkeys-config-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except Exception as exc:  # keep polling whatever happens
                self._fail(f"unexpected error: {type(exc).__name__}")

    def _stat(self) -> tuple[tuple[str, int, int, int], ...]:
        # The inode too: an atomic replace within one timestamp tick, same size, is still seen.
        entries = []
        with os.scandir(self.directory) as it:
            for entry in it:
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    st = entry.stat()
                    entries.append((entry.name, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sorted(entries))

    async def poll(self) -> None:
        """Reload when any document changed since the last successful read."""
        try:
            signature = self._stat()
        except OSError as exc:
            self._fail(f"cannot list {self.directory}: {exc.strerror}")
            return
        if signature == self._signature:
            return
        try:
            loaded = await asyncio.to_thread(load_config_dir, self.directory)
        except (ValueError, OSError) as exc:
            # Leave the signature unchanged so the next poll retries (the writer may be mid-way).
            self._fail(str(exc) if isinstance(exc, ValueError) else f"read failed: {exc.strerror}")
            return
        self._signature = signature
        if self._current is not None and loaded != self._current:
            logger.info(
                "config reloaded from %s: %d keys, %d providers",
                self.directory,
                len(loaded.keys),
                len(loaded.providers),
            )
        self._publish(loaded)
