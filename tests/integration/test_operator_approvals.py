"""Approvals end to end: webhook -> stored stamps -> operator -> config Secrets -> proxy -> SDK call.

The emulator does not call webhooks, so the test plays the API server: it sends each write as an
AdmissionReview to the operator's running webhook (TLS) and stores what the webhook admitted.
A pending key has its key Secret (workloads can deploy) but the proxy refuses the key with
403 key_pending_approval; once an approver approved, the same key works (measured: well under 2 s).
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
from tests import admission_harness as ah
from tests import kmock_cluster as kc
from tests import proxy_harness
from tests.fakes import tls

from llmkeys_operator import api
from llmkeys_proxy import kubesource, tokens

NS = "team-a"
MODEL = "mock-small"


async def outcome(proxy_url: str, key: str) -> str:
    async with openai.AsyncOpenAI(api_key=key, base_url=proxy_url + "/v1", max_retries=0) as sdk:
        try:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        except openai.APIStatusError as exc:
            return str(exc.code or exc.status_code)
    return "ok"


async def until_outcome(proxy_url: str, key: str, expected: str, timeout: float = 30.0) -> float:
    """Seconds until the proxy answers `expected` for `key`."""
    started = time.monotonic()
    seen = await outcome(proxy_url, key)
    while seen != expected:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"proxy kept answering {seen!r}, expected {expected!r}")
        await asyncio.sleep(0.02)
        seen = await outcome(proxy_url, key)
    return time.monotonic() - started


def ready(obj: dict[str, Any] | None) -> tuple[str | None, str | None]:
    cond = kc.condition(obj, "Ready") or {}
    return cond.get("reason"), cond.get("message")


async def store(client: kc.ClusterClient, admitted: ah.Admitted, old: dict[str, Any]) -> dict[str, Any]:
    """Write what the webhook admitted (as the API server would), as a merge patch over `old`."""
    assert admitted.allowed and admitted.obj is not None, admitted.message
    new_annotations = admitted.obj["metadata"].get("annotations") or {}
    old_annotations = old["metadata"].get("annotations") or {}
    patch_annotations: dict[str, Any] = dict(new_annotations)
    patch_annotations.update({name: None for name in old_annotations if name not in new_annotations})
    patch = {"metadata": {"annotations": patch_annotations}, "spec": admitted.obj["spec"]}
    return await client.patch(kc.VIRTUALKEYS, NS, old["metadata"]["name"], patch)


async def test_pending_key_is_refused_until_approved_then_works_within_2s(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    tmp_path: Path,
) -> None:
    await kube_cluster.set_namespace(NS)
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
        },
    )
    await cluster_client.create(
        kc.POLICIES,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": "needs-approval"},
            "spec": {
                "selfService": {"ownerFromRequester": True},
                "approval": {"required": True, "approvers": {"groups": ["llm-approvers"]}},
            },
        },
    )
    files = tls.make_self_signed(tmp_path)
    port = ah.free_port()
    settings = kc.operator_settings(webhook_port=port, webhook_cert_dir=str(tmp_path))
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    access = kubesource.ApiAccess(server=str(kube_cluster.url))
    source = kubesource.KubernetesSource(kc.GATEWAY_NAMESPACE, access=access, debounce_s=0.02)
    async with aiohttp.ClientSession() as session, proxy_harness.run_proxy(source) as proxy:
        webhook = ah.WebhookClient(session, port, files.client_context())
        await webhook.wait_serving()

        # alice creates her key through the webhook (stamped), the API server stores it.
        body = {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": "alice-key", "namespace": NS},
            "spec": {"models": ["mock-*"], "limits": {"requestsPerMinute": 50}},
        }
        created = await webhook.admit("CREATE", body, user="alice", groups=["developers"])
        assert created.allowed and created.obj is not None
        await cluster_client.create(kc.VIRTUALKEYS, created.obj)

        # Pending: the Secret is there (workloads can deploy), its key does not work yet.
        secret = await cluster_client.wait_for(kc.SECRETS, NS, "alice-key-llm-key", lambda o: o is not None)
        assert secret is not None
        key = base64.b64decode(secret["data"]["api-key"]).decode()
        vk = await cluster_client.wait_for(
            kc.VIRTUALKEYS, NS, "alice-key", lambda o: ready(o)[0] == "PendingApproval"
        )
        assert vk is not None
        _, message = ready(vk)
        assert message == (
            'waiting for approval required by LLMPolicy "needs-approval" (approvers: group:llm-approvers)'
        )
        assert kc.condition(vk, "Ready")["status"] == "False"  # type: ignore[index]
        assert vk["status"]["createdBy"] == "alice" and vk["spec"]["owner"]["user"] == "alice"
        assert vk["status"]["approval"] == {"state": "Pending", "approvers": ["group:llm-approvers"]}
        await until_outcome(proxy.url, key, "key_pending_approval")
        # As `llmkeys proxy` does before it reports ready: the first counted request would otherwise
        # build the o200k encoding (~1 s here) inside the measured time.
        await asyncio.to_thread(tokens.preload_encodings, ("o200k_base",))

        # An approver approves: the webhook stamps it, the API server stores it; measure until it works.
        act = {**vk, "metadata": {**vk["metadata"]}}
        act["metadata"]["annotations"] = {
            **vk["metadata"]["annotations"],
            api.ANNOTATION_APPROVAL: api.APPROVE,
        }
        approved = await webhook.admit("UPDATE", act, vk, user="carol", groups=["llm-approvers"])
        started = time.monotonic()
        await store(cluster_client, approved, vk)
        await until_outcome(proxy.url, key, "ok")
        took = time.monotonic() - started
        print(f"approval -> key works: {took:.3f} s")  # the measurement the issue asks for (bound: 2 s)
        assert took < 2.0
        vk = await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "alice-key", lambda o: ready(o)[0] == "Active")
        assert vk is not None and vk["status"]["approval"]["state"] == "Approved"
        assert vk["status"]["approval"]["by"] == "carol"

        # Raising a limit (alice may: within the guardrails) returns the key to PendingApproval ...
        raised = {**vk, "spec": {**vk["spec"], "limits": {"requestsPerMinute": 500}}}
        vk = await store(cluster_client, await webhook.admit("UPDATE", raised, vk, user="alice"), vk)
        vk = await cluster_client.wait_for(
            kc.VIRTUALKEYS, NS, "alice-key", lambda o: ready(o)[0] == "PendingApproval"
        )
        assert vk is not None
        assert "changed since approved by carol: limits.requestsPerMinute 500 > approved 50" in (
            ready(vk)[1] or ""
        )
        await until_outcome(proxy.url, key, "key_pending_approval")
        # ... cutting it below the approved value makes it work again without a new approval.
        cut = {**vk, "spec": {**vk["spec"], "limits": {"requestsPerMinute": 10}}}
        vk = await store(cluster_client, await webhook.admit("UPDATE", cut, vk, user="alice"), vk)
        await until_outcome(proxy.url, key, "ok")

        # Denial, with its reason, is refused with its own code.
        deny = {**vk, "metadata": {**vk["metadata"]}}
        deny["metadata"]["annotations"] = {
            **vk["metadata"]["annotations"],
            api.ANNOTATION_APPROVAL: api.DENY,
            api.ANNOTATION_APPROVAL_REASON: "no budget this quarter",
        }
        vk = await store(
            cluster_client,
            await webhook.admit("UPDATE", deny, vk, user="carol", groups=["llm-approvers"]),
            vk,
        )
        await until_outcome(proxy.url, key, "key_approval_denied")
        vk = await cluster_client.wait_for(
            kc.VIRTUALKEYS, NS, "alice-key", lambda o: ready(o)[0] == "ApprovalDenied"
        )
        assert ready(vk)[1] == "denied by carol: no budget this quarter"
        assert vk is not None and vk["status"]["approval"]["reason"] == "no budget this quarter"
