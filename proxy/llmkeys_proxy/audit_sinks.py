"""Audit sinks behind one non-blocking writer each, fanned out by `AuditTrail` (DESIGN.md 11).

The settler (request records) and the operator (lifecycle acts) call `AuditTrail.write`, which only
appends to each sink's bounded in-memory queue and returns: a sink's own thread serialises and
writes batches. A full queue drops the record, counts it (`llmkeys_audit_dropped_total{sink}` through
the `on_drop` callback) and warns at most every `WARN_INTERVAL_S`; a sink that raises counts its
batch as dropped the same way. `close()` (clean shutdown) flushes every queue before it returns.

Sinks: `StdoutSink` (one JSON line per record on the `llmkeys.audit` logger, the default),
`audit_file.ChainedFileSink` (hash-chained JSON lines), `audit_otel.OtlpSink` (OTLP logs + spans;
imported only when configured).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import orjson

logger = logging.getLogger("llmkeys.audit_sinks")  # not under llmkeys.audit: that is the stdout sink
audit_logger = logging.getLogger("llmkeys.audit")

#: One audit record as the sinks see it: an audit.AuditRecord / LifecycleRecord or a dict, anything
#: orjson serialises to a JSON object.
Record = Any

#: The sink names a policy may list (`LLMPolicy.spec.audit.sinks`) and LLMKEYS_AUDIT_SINKS takes.
SINK_NAMES = ("stdout", "file", "otlp")
#: Least time between two warnings of one sink about dropped records.
WARN_INTERVAL_S = 10.0
#: Records a sink's thread takes from its queue per write.
BATCH_MAX = 512


class Sink(Protocol):
    """Where records end up; `emit` and `close` run in the sink's own thread."""

    name: str

    def emit(self, batch: list[Record]) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    """Today's audit line: one JSON object per record on the `llmkeys.audit` logger (stdout in
    `llmkeys proxy`, see server.configure_logging)."""

    name = "stdout"

    def emit(self, batch: list[Record]) -> None:
        if not audit_logger.isEnabledFor(logging.INFO):
            return
        for record in batch:
            audit_logger.info(orjson.dumps(record, option=orjson.OPT_UTC_Z).decode())

    def close(self) -> None:
        return None


class QueuedSink:
    """A sink behind a bounded queue and one daemon thread (see module docstring)."""

    def __init__(self, sink: Sink, capacity: int, on_drop: Callable[[str, int], None] | None = None) -> None:
        self.sink = sink
        self.name = sink.name
        self.capacity = capacity
        self._on_drop = on_drop
        self._queue: collections.deque[Record] = collections.deque()
        self._wakeup = threading.Event()
        self._progress = threading.Condition()
        self._accepted = 0
        self._done = 0
        self.dropped = 0
        self._last_warning = 0.0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"llmkeys-audit-{sink.name}", daemon=True)
        self._thread.start()

    def offer(self, record: Record) -> None:
        """Queue `record`; never blocks (a full queue drops it, counted)."""
        if len(self._queue) >= self.capacity or self._closing:
            self._drop(1, "queue full" if not self._closing else "sink closed")
            return
        self._queue.append(record)
        self._accepted += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        target = self._accepted
        with self._progress:
            return self._progress.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush, stop the thread and close the sink (a sink still stalled after `timeout` is left
        to its daemon thread: shutdown waits no longer)."""
        flushed = self.flush(timeout)
        self._closing = True
        self._wakeup.set()
        self._thread.join(timeout if flushed else 0)
        if not flushed:
            lost = self.pending
            logger.warning("audit sink %s did not flush in %.0f s: %d records lost", self.name, timeout, lost)

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if self._on_drop is not None:
            self._on_drop(self.name, count)
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            logger.warning(
                "audit sink %s is slow or down (%s): %d records dropped so far", self.name, why, self.dropped
            )

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch: list[Record] = []
                while self._queue and len(batch) < BATCH_MAX:
                    batch.append(self._queue.popleft())
                try:
                    self.sink.emit(batch)
                except Exception as exc:  # a broken sink loses its batch, counted, and keeps going
                    self._drop(len(batch), f"write failed: {type(exc).__name__}")
                with self._progress:
                    self._done += len(batch)
                    self._progress.notify_all()
            if self._closing:
                try:
                    self.sink.close()
                except Exception as exc:
                    logger.warning("audit sink %s did not close cleanly: %s", self.name, type(exc).__name__)
                return


class AuditTrail:
    """The sinks of one process; `write` fans a record out to those it names."""

    def __init__(self, sinks: Iterable[QueuedSink] = ()) -> None:
        self.sinks = tuple(sinks)
        self.names = frozenset(s.name for s in self.sinks)

    def write(self, record: Record, sinks: Iterable[str] = ()) -> None:
        """Queue `record` for the named sinks (none named: every sink); returns at once."""
        wanted = frozenset(sinks) if sinks else None
        for sink in self.sinks:
            if wanted is None or sink.name in wanted:
                sink.offer(record)

    def flush(self, timeout: float = 10.0) -> bool:
        return all(sink.flush(timeout) for sink in self.sinks)

    def close(self, timeout: float = 10.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)

    @property
    def dropped(self) -> dict[str, int]:
        return {sink.name: sink.dropped for sink in self.sinks}


def parse_sink_names(names: Iterable[str], variable: str = "LLMKEYS_AUDIT_SINKS") -> tuple[str, ...]:
    """Validated sink names (ValueError naming the variable for an unknown one)."""
    result = []
    for name in names:
        if name not in SINK_NAMES:
            raise ValueError(f"{variable}: unknown audit sink {name!r} (known: {', '.join(SINK_NAMES)})")
        if name not in result:
            result.append(name)
    return tuple(result)


def build_trail(
    values: Any, stream: str | None = None, on_drop: Callable[[str, int], None] | None = None
) -> AuditTrail:
    """The sinks LLMKEYS_AUDIT_* settings name (`values`: proxy or operator settings); `stream`
    names this process's file chain (default the settings' own). The OpenTelemetry SDK is imported
    only when the otlp sink is on."""
    sinks: list[Sink] = []
    for name in values.audit_sinks:
        if name == "stdout":
            sinks.append(StdoutSink())
        elif name == "file":
            from llmkeys_proxy import audit_file

            sinks.append(
                audit_file.ChainedFileSink(
                    values.audit_file_dir,
                    stream or values.audit_file_stream,
                    max_bytes=values.audit_file_max_bytes,
                    retain_days=values.audit_file_retain_days,
                )
            )
    return AuditTrail(QueuedSink(sink, values.audit_queue_size, on_drop) for sink in sinks)
