"""The leak scan's verdict: nothing the test run produced (log lines, metrics, proxy responses,
subprocess output files) holds a virtual key or a provider credential. Runs last (tests/conftest.py).
"""

from __future__ import annotations

import logging

import pytest
from tests import leak_scan

from llmkeys_proxy import keys, redaction


def test_the_scanner_finds_a_planted_key_and_credential() -> None:
    planted = leak_scan.LeakScan()
    planted.extra_secrets.add("upstream-credential-planted-123")
    key = keys.generate_key()
    planted.handle(logging.makeLogRecord({"msg": "header %s", "args": (key + "A" * 100,)}))
    planted.bodies.append(("GET /x -> 500", b'{"error": "upstream-credential-planted-123"}'))
    assert [f.what for f in planted.findings()] == ["virtual key", "provider credential"]


def test_no_virtual_key_or_provider_credential_in_anything_the_suite_produced(
    leak_scanner: leak_scan.LeakScan, request: pytest.FixtureRequest
) -> None:
    findings = leak_scanner.findings()
    # Never print the values: where they were and what they were is enough to find them.
    assert findings == [], "\n".join(f"{f.what} in {f.where}" for f in findings[:50])
    lines, bodies = leak_scanner.scanned
    if len(request.session.items) > 10:  # the whole suite (or a large part) ran: the scan saw it
        assert lines > 0 and bodies > 0 and redaction.known_secrets()
