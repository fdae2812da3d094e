"""Real subprocesses for the bench: fake upstream, redis-server, the proxy; CPU pinning and /proc readings.

Called by `bench.scenarios`. Every process is started with its CPU affinity (taskset), its output
sent to a log file (the proxy's audit lines cost what they cost in production: a write per request),
and is stopped by its own pid. CPU time and RSS are read from /proc for the process and its children
(the proxy's SO_REUSEPORT workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(command: list[str], cpus: set[int] | None) -> list[str]:
    """`command` prefixed with taskset so it (and everything it forks) runs on `cpus` only."""
    if not cpus or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", ",".join(str(cpu) for cpu in sorted(cpus)), *command]


def children_of(pid: int) -> list[int]:
    """Every descendant pid of `pid` (from /proc/*/stat parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by `pids` (processes that vanished count 0)."""
    total = 0
    for pid in pids:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / _CLOCK_TICKS


def pin(pids: list[int], cpus: set[int]) -> None:
    """Move every thread of `pids` to `cpus` (processes that vanished are skipped)."""
    for pid in pids:
        try:
            threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in threads:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                continue


def run_queue_wait_seconds(pids: list[int]) -> float:
    """Seconds `pids` spent runnable but waiting for a CPU (/proc/<pid>/schedstat): the share of the
    proxy's time that other work on its CPU took."""
    total = 0
    for pid in pids:
        try:
            total += int(pathlib.Path(f"/proc/{pid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def cpu_busy_ticks(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies so far of `cpus` together, from /proc/stat (idle and iowait not busy)."""
    busy = total = 0
    for line in pathlib.Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(value) for value in rest.split()]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total += sum(values[:8])  # guest time is already inside user time
        busy += sum(values[:8]) - idle
    return busy, total


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of time the CPUs were busy between two `cpu_busy_ticks` readings (anyone's work)."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * 100 if total > 0 else 0.0


def pss_bytes(pid: int) -> int:
    """Proportional set size: memory pages shared with other processes (e.g. forked workers) count
    once in total, split between the sharers; what a worker really costs."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    try:
        statm = pathlib.Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(statm[1]) * _PAGE_SIZE


@dataclasses.dataclass
class ManagedProcess:
    """A started subprocess and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tree(self) -> list[int]:
        """This process and its descendants, e.g. the proxy master and its workers."""
        return [self.pid, *children_of(self.pid)]

    def workers(self) -> list[int]:
        """Processes that serve requests: the children when there are any (multiprocessing's
        resource tracker aside), otherwise this process (taskset execs, so the pid is the command)."""
        children = [pid for pid in children_of(self.pid) if b"resource_tracker" not in _cmdline(pid)]
        return children or [self.pid]

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def start(
    name: str,
    command: list[str],
    *,
    log_dir: pathlib.Path,
    cpus: set[int] | None,
    env: Mapping[str, str] | None = None,
    capture_stdout: bool = False,
) -> ManagedProcess:
    """Start `command` pinned to `cpus`, stderr (and stdout unless captured) into `<log_dir>/<name>.log`."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            pinned(command, cpus),
            stdout=subprocess.PIPE if capture_stdout else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
        )
    return ManagedProcess(name=name, process=process, log_path=log_path)


@contextlib.contextmanager
def upstream(
    *, processes: int, api_key: str, log_dir: pathlib.Path, cpus: set[int] | None
) -> Iterator[tuple[str, list[ManagedProcess]]]:
    """`processes` fake upstream servers sharing one port; yields (base URL, processes)."""
    port = free_port()
    started: list[ManagedProcess] = []
    try:
        for index in range(processes):
            command = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--api-key", api_key]
            managed = start(f"upstream-{index}", command, log_dir=log_dir, cpus=cpus, capture_stdout=True)
            started.append(managed)
            assert managed.process.stdout is not None
            line = managed.process.stdout.readline()  # "ready <pid>" once the socket listens
            if not line.startswith(b"ready"):
                raise RuntimeError(f"fake upstream did not start: {managed.log_tail()}")
        yield f"http://127.0.0.1:{port}", started
    finally:
        for managed in started:
            managed.stop()
            if managed.process.stdout is not None:
                managed.process.stdout.close()


@contextlib.contextmanager
def redis_server(*, log_dir: pathlib.Path, cpus: set[int] | None) -> Iterator[tuple[str, ManagedProcess]]:
    """A throwaway redis-server on a free loopback port, no persistence; yields its URL and process."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is required: run `make setup` (scripts/ensure-redis.sh)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    managed = start("redis", command, log_dir=log_dir, cpus=cpus)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if managed.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {managed.log_tail()}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0", managed
    finally:
        managed.stop()


def wait_ready(url: str, process: ManagedProcess, timeout_s: float = 30.0) -> float:
    """Poll `url` until it answers 200 and return the seconds that took (called right after `start`,
    that is startup-to-ready). Raises with the log tail when the process dies or never gets ready."""
    began = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http only
                if response.status == 200:
                    return time.monotonic() - began
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.process.poll() is not None:
            raise RuntimeError(f"{process.name} exited ({process.process.returncode}): {process.log_tail()}")
        if time.monotonic() - began > timeout_s:
            raise RuntimeError(f"{process.name} not ready after {timeout_s:.0f}s: {process.log_tail()}")
        time.sleep(0.005)
