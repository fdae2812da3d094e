"""Talk to the operator's admission webhook as the API server does: AdmissionReview v1 over TLS.

Used by the admission and approval tests. `WebhookClient.admit` plays the API server's admission
chain for one write: the mutating webhook first, its JSONPatch applied, then the validating
webhook on the mutated object; it returns what would be stored, or the refusal message `kubectl`
would print.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import json
import socket
import ssl
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import jsonpatch

GROUP = "llmkeys.io"
VERSION = "v1alpha1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def admission_review(
    operation: str,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    username: str,
    groups: Sequence[str],
) -> dict[str, Any]:
    """An admission.k8s.io/v1 AdmissionReview request as kube-apiserver sends it."""
    meta = obj.get("metadata") or {}
    kind = {"group": GROUP, "version": VERSION, "kind": "VirtualKey"}
    resource = {"group": GROUP, "version": VERSION, "resource": "virtualkeys"}
    options_kind = "CreateOptions" if operation == "CREATE" else "UpdateOptions"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "operation": operation,
            "userInfo": {
                "username": username,
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, username)),
                "groups": [*groups, "system:authenticated"],
            },
            "object": copy.deepcopy(dict(obj)),
            "oldObject": copy.deepcopy(dict(old)) if old is not None else None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
        },
    }


@dataclasses.dataclass
class Admitted:
    allowed: bool
    #: The object as the API server would store it (mutations applied), when allowed.
    obj: dict[str, Any] | None
    #: The refusal message (status.message), when refused.
    message: str | None
    code: int | None


class WebhookClient:
    """HTTPS client of one webhook server, trusting the given CA bundle."""

    def __init__(self, session: aiohttp.ClientSession, port: int, ssl_context: ssl.SSLContext) -> None:
        self._session = session
        self.base = f"https://127.0.0.1:{port}"
        self._ssl = ssl_context

    async def post(self, path: str, review: Mapping[str, Any]) -> dict[str, Any]:
        async with self._session.post(self.base + path, json=review, ssl=self._ssl) as response:
            assert response.status == 200, await response.text()
            answer: dict[str, Any] = await response.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == review["request"]["uid"]
        return answer

    async def wait_serving(self, timeout: float = 30.0) -> None:
        """Until the server answers and its indexes are complete (it refuses with 503 before)."""
        probe = {
            "apiVersion": "v1",
            "kind": "VirtualKey",
            "metadata": {"name": "probe", "namespace": "probe"},
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                answer = await self.post("/validate", admission_review("CREATE", probe, None, "probe", []))
                if (answer["response"].get("status") or {}).get("code") != 503:
                    return
            except (aiohttp.ClientError, OSError, AssertionError):
                pass
            if loop.time() > deadline:
                raise AssertionError(f"the webhook at {self.base} did not start serving")
            await asyncio.sleep(0.1)

    async def admit(
        self,
        operation: str,
        obj: Mapping[str, Any],
        old: Mapping[str, Any] | None = None,
        *,
        user: str,
        groups: Sequence[str] = (),
    ) -> Admitted:
        mutated = await self.post("/mutate", admission_review(operation, obj, old, user, groups))
        response = mutated["response"]
        if not response["allowed"]:
            return Admitted(False, None, response["status"]["message"], response["status"].get("code"))
        stored = copy.deepcopy(dict(obj))
        if response.get("patch"):
            assert response["patchType"] == "JSONPatch"
            ops = json.loads(base64.b64decode(response["patch"]))
            stored = jsonpatch.apply_patch(stored, ops)
        validated = await self.post("/validate", admission_review(operation, stored, old, user, groups))
        response = validated["response"]
        if not response["allowed"]:
            return Admitted(False, None, response["status"]["message"], response["status"].get("code"))
        assert "patch" not in response  # a validating webhook never mutates
        return Admitted(True, stored, None, None)
