"""`llmkeys pending|approve|deny` with a kubeconfig file pointing at the emulated API server.

The emulator runs no webhooks: an act written by `approve` is stored as the raw annotation, and
the operator must not take it for an approval (only the webhook's stamps count in a cluster).
Passing the same write through the running webhook, as the API server would, approves the key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from tests import admission_harness as ah
from tests import kmock_cluster as kc
from tests.fakes import tls

from llmkeys_operator import api, approver, cli

NS = "team-a"


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "carol", "user": {"token": "not-checked-by-the-emulator"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "carol"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


def reason_of(obj: dict[str, Any] | None) -> str | None:
    return (kc.condition(obj, "Ready") or {}).get("reason")


async def test_pending_approve_deny_through_the_users_kubeconfig(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await kube_cluster.set_namespace(NS)
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock"},
        },
    )
    await cluster_client.create(
        kc.POLICIES,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": "gate"},
            "spec": {"approval": {"required": True, "approvers": {"users": ["carol"]}}},
        },
    )
    (tmp_path / "certs").mkdir()
    files = tls.make_self_signed(tmp_path / "certs")
    port = ah.free_port()
    settings = kc.operator_settings(webhook_port=port, webhook_cert_dir=str(tmp_path / "certs"))
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    config = str(kubeconfig(tmp_path / "kubeconfig", str(kube_cluster.url)))

    async with aiohttp.ClientSession() as session:
        webhook = ah.WebhookClient(session, port, files.client_context())
        await webhook.wait_serving()
        body = {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": "wants", "namespace": NS},
            "spec": {"limits": {"requestsPerMinute": 10}},
        }
        created = await webhook.admit("CREATE", body, user="alice")
        assert created.allowed and created.obj is not None
        await cluster_client.create(kc.VIRTUALKEYS, created.obj)
        await cluster_client.wait_for(
            kc.VIRTUALKEYS, NS, "wants", lambda o: reason_of(o) == "PendingApproval"
        )

        # pending: the emulator cannot say who the caller is, so every pending key is listed.
        assert await asyncio.to_thread(cli.main, ["pending", "--kubeconfig", config]) == 0
        out = capsys.readouterr()
        lines = out.out.splitlines()
        assert lines[0].split()[:4] == ["KEY", "CREATED-BY", "OWNER", "WAITING-SINCE"]
        assert lines[1].split()[:3] == ["team-a/wants", "alice", "-"]
        assert "waiting for approval required by LLMPolicy" in lines[1]
        assert "did not say who you are" in out.err

        # approve writes the act as the kubeconfig's user; no webhook recorded it here, and the
        # operator does not take a bare act for an approval.
        code = await asyncio.to_thread(cli.main, ["approve", f"{NS}/wants", "--kubeconfig", config])
        assert code == 1
        assert "no webhook recorded it" in capsys.readouterr().out
        stored = cluster_client.get(kc.VIRTUALKEYS, NS, "wants")
        assert stored is not None
        assert stored["metadata"]["annotations"][api.ANNOTATION_APPROVAL] == api.APPROVE
        await asyncio.sleep(0.5)  # several publish rounds
        assert reason_of(cluster_client.get(kc.VIRTUALKEYS, NS, "wants")) == "PendingApproval"

        # The same write through the webhook (as the API server passes it), as carol: approved.
        old = {
            **stored,
            "metadata": {**stored["metadata"], "annotations": dict(created.obj["metadata"]["annotations"])},
        }
        admitted = await webhook.admit("UPDATE", stored, old, user="carol")
        assert admitted.allowed and admitted.obj is not None
        annotations: dict[str, Any] = dict(admitted.obj["metadata"]["annotations"])
        annotations[api.ANNOTATION_APPROVAL] = None  # removed by the webhook's patch
        await cluster_client.patch(kc.VIRTUALKEYS, NS, "wants", {"metadata": {"annotations": annotations}})
        await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "wants", lambda o: reason_of(o) == "Active")
        assert await asyncio.to_thread(cli.main, ["pending", "--kubeconfig", config]) == 0
        assert "team-a/wants" not in capsys.readouterr().out

    # deny needs a reason; a missing key is reported, not a traceback.
    with pytest.raises(SystemExit):
        await asyncio.to_thread(cli.main, ["deny", f"{NS}/wants", "--kubeconfig", config])
    capsys.readouterr()
    assert (
        await asyncio.to_thread(cli.main, ["deny", f"{NS}/nope", "--reason", "x", "--kubeconfig", config])
        == 2
    )
    assert "VirtualKey team-a/nope not found" in capsys.readouterr().err


def test_pending_lists_only_what_the_caller_may_approve() -> None:
    def vk(name: str, state: str, approvers: list[str]) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": NS},
            "status": {"approval": {"state": state, "approvers": approvers}, "createdBy": "alice"},
        }

    keys = [
        vk("by-user", "Pending", ["carol"]),
        vk("by-group", "Pending", ["group:approvers"]),
        vk("someone-else", "Pending", ["dave"]),
        vk("done", "Approved", ["carol"]),
    ]
    mine = approver.pending_rows(keys, ("carol", ("approvers",)), show_all=False)
    assert [row[0] for row in mine] == ["team-a/by-group", "team-a/by-user"]
    every = approver.pending_rows(keys, ("carol", ("approvers",)), show_all=True)
    assert [row[0] for row in every] == ["team-a/by-group", "team-a/by-user", "team-a/someone-else"]
