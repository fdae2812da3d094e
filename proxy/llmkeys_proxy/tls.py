"""TLS of the proxy's own listener (LLMKEYS_TLS_CERT_FILE / LLMKEYS_TLS_KEY_FILE): the server context,
and rotated certificate files picked up without a restart. Created by server.py for each process.

boto3 sends a Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`) only over HTTPS, so the proxy can terminate
TLS itself instead of needing an Ingress or a mesh in front. Rotation (cert-manager renewing the
Secret, the kubelet swapping the mounted files): the listening context hands every new handshake the
context loaded last (its SNI callback runs for every ClientHello, SNI or not); files that fail to
load (a half-written pair) keep the previous certificate in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl

logger = logging.getLogger("llmkeys.proxy.tls")

#: How often the certificate files are checked for a change (two stat calls).
RELOAD_INTERVAL_S = 10.0


def load_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context (TLS >= 1.2, Python's secure defaults) for the PEM certificate chain and key;
    ValueError with a message a person can act on when they cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise ValueError(f"TLS file not found: {exc.filename}") from None
    except PermissionError as exc:
        raise ValueError(f"TLS file not readable: {exc.filename}") from None
    except ssl.SSLError as exc:
        # The reason only (e.g. KEY_VALUES_MISMATCH, PEM lib): never file contents.
        raise ValueError(
            f"cannot load the TLS certificate {cert_file} with key {key_file}: {exc.reason or exc}"
        ) from None
    return context


class ServerTls:
    """The listener's TLS: `context` goes to the server socket; `reload_if_changed` (or `watch`) swaps
    in rotated files for new connections. Established connections keep the certificate they began with."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._signature = self._files_signature()
        self._current = load_server_context(cert_file, key_file)
        self.context = load_server_context(cert_file, key_file)
        self.context.sni_callback = self._select

    def _select(self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        ssl_object.context = self._current

    def _files_signature(self) -> tuple[tuple[int, int, int], ...]:
        # stat follows symlinks: a kubelet Secret update (an atomic `..data` symlink swap) shows here.
        signature = []
        for path in (self.cert_file, self.key_file):
            try:
                stat = os.stat(path)
            except OSError:
                signature.append((0, 0, 0))
            else:
                signature.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return tuple(signature)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since last time; True when a new certificate is in
        service. A pair that fails to load is logged and retried at the next change."""
        signature = self._files_signature()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            context = load_server_context(self.cert_file, self.key_file)
        except ValueError as exc:
            logger.warning(
                "TLS files changed but cannot be loaded (%s); serving the previous certificate", exc
            )
            return False
        self._current = context
        logger.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    async def watch(self, stop: asyncio.Event, interval_s: float = RELOAD_INTERVAL_S) -> None:
        """Check for rotated files every `interval_s` until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            if not stop.is_set():
                self.reload_if_changed()
