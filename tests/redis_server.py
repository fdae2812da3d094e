"""A real, throwaway redis-server for tests (used by the fixtures in tests/conftest.py).

Listens on a free loopback TCP port, no unix socket, no persistence (`--save '' --appendonly no`), so
a restart comes back empty, like a Redis pod that lost its memory. `kill()` and `restart()` (same
port) let failure tests take it away and bring it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse

from tests.fakes import loopback


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca_cert: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path


def make_tls_files(directory: pathlib.Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    new_ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        ["openssl", "req", "-x509", *new_ec_key, "-keyout", ca_key, "-out", ca_cert, "-days", "1",
         "-subj", "/CN=llmkeys test CA"],
        ["openssl", "req", *new_ec_key, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return TlsFiles(ca_cert, cert, key)


class RedisServer:
    """One redis-server process; `url` stays valid across `restart()`. Optionally with a password
    (`requirepass`) and TLS only (no plain port)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        password: str | None = None,
        tls: TlsFiles | None = None,
        cluster: bool = False,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is required: run `make setup` (scripts/ensure-redis.sh)")
        self.binary = binary
        self.port = port or loopback.free_port()
        self.password = password
        self.tls = tls
        #: A one-node Redis Cluster owning every slot: scripts touching keys of two slots fail
        #: (CROSSSLOT), which proves the key layout is cluster safe without a multi-node cluster.
        self.cluster = cluster
        self.cluster_bus_port = loopback.free_port() if cluster else 0
        self.workdir = tempfile.TemporaryDirectory(prefix="llmkeys-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            query = urllib.parse.urlencode({"ssl_ca_certs": str(self.tls.ca_cert)})
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _server_args(self) -> list[str]:
        args = ["--bind", "127.0.0.1", "--unixsocket", "", "--save", "", "--appendonly", "no"]
        args += ["--dir", self.workdir.name, "--protected-mode", "yes", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            nodes = pathlib.Path(self.workdir.name) / "nodes.conf"
            nodes.unlink(missing_ok=True)  # a restart comes back empty, slots included
            # The bus port would default to port + 10000, which may not exist.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", str(nodes)]
            args += ["--cluster-port", str(self.cluster_bus_port)]
        if self.tls is None:
            return [*args, "--port", str(self.port)]
        return [
            *args, "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.server_cert), "--tls-key-file", str(self.tls.server_key),
            "--tls-ca-cert-file", str(self.tls.ca_cert), "--tls-auth-clients", "no",
        ]  # fmt: skip

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, *self._server_args()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} on port {self.port}")
            if self._answers():
                if self.cluster:
                    self._claim_all_slots(deadline)
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def _claim_all_slots(self, deadline: float) -> None:
        if not self.command(b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383").startswith(b"+OK"):
            raise RuntimeError("CLUSTER ADDSLOTSRANGE failed")
        while time.monotonic() < deadline:
            if b"cluster_state:ok" in self.command(b"CLUSTER", b"INFO"):
                return
            time.sleep(0.02)
        raise RuntimeError("the one-node cluster did not become ready")

    def command(self, *parts: bytes) -> bytes:
        """One command over plain TCP (no TLS, no password), the raw reply's first bytes."""
        assert self.tls is None and not self.password
        request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            return sock.recv(65536)

    def _answers(self) -> bool:
        """Any RESP reply to PING (a password-protected server answers -NOAUTH: it is up)."""
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), timeout=0.5))
                if self.tls is not None:
                    context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
                    sock = stack.enter_context(context.wrap_socket(sock, server_hostname="127.0.0.1"))
                sock.sendall(b"PING\r\n")
                return sock.recv(16)[:1] in (b"+", b"-")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill, then start empty on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        with contextlib.suppress(OSError):
            self.workdir.cleanup()

    def flushall(self) -> None:
        """Empty it (plain TCP without password only: the session servers)."""
        reply = self.command(b"FLUSHALL")
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
