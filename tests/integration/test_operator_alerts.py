"""Budget alerts and inactivity, end to end: the real operator (kopf on the emulator), a real proxy and
Redis, SDK traffic, and a real webhook receiver on loopback.

- thresholds crossed under real traffic give exactly one Event and one webhook call per threshold
  per month, also after the operator restarts;
- a webhook that hangs does not delay reconciling other keys;
- a key idle past `suspendAfter` is refused by the proxy (key_inactive), comes back when reactivated
  with the annotation, and the operator never writes its spec.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from aiohttp import web
from tests import kmock_cluster as kc
from tests import proxy_harness

from llmkeys_proxy import kubesource
from llmkeys_proxy.limits import redis as redis_limits

NS = "team-a"


class Webhook:
    """An HTTP receiver on loopback recording every POSTed JSON body; `hang` holds requests open."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.hang = False
        self.in_flight = 0
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        try:
            if self.hang:
                await self.release.wait()
            self.bodies.append(await request.json())
            return web.json_response({"ok": True})
        finally:
            self.in_flight -= 1


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    receiver = Webhook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    yield receiver
    receiver.release.set()
    await runner.cleanup()


async def _setup(cluster_client: kc.ClusterClient, webhook: Webhook, policy_spec: dict[str, Any]) -> None:
    await cluster_client.create(
        kc.SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            # Read like a provider credential: only Secrets labelled for the operator are seen.
            "metadata": {
                "name": "alert-webhook",
                "namespace": kc.GATEWAY_NAMESPACE,
                "labels": {"llmkeys.io/secret": "credential"},
            },
            "data": {"url": base64.b64encode(webhook.url.encode()).decode()},
        },
    )
    await cluster_client.create(
        kc.CREDENTIALS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "ProviderCredential",
            "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
            "spec": {"provider": "mock", "models": [{"name": "mock-small"}]},
        },
    )
    await cluster_client.create(
        kc.POLICIES,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "LLMPolicy",
            "metadata": {"name": "guardrails"},
            "spec": policy_spec,
        },
    )


async def _new_key(cluster_client: kc.ClusterClient, name: str, spec: dict[str, Any]) -> str:
    await cluster_client.create(
        kc.VIRTUALKEYS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        },
    )
    secret = await cluster_client.wait_for(kc.SECRETS, NS, f"{name}-llm-key", lambda o: o is not None)
    assert secret is not None
    return base64.b64decode(secret["data"]["api-key"]).decode()


def _events(cluster: kc.LlmkeysKubernetesEmulator, reason: str, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.live_objects(kc.EVENTS, NS)
        if e.get("reason") == reason and e.get("involvedObject", {}).get("name") == name
    ]


def _webhook_on(name: str) -> dict[str, Any]:
    return {"urlSecretRef": {"name": name, "key": "url"}, "format": "generic"}


async def test_each_threshold_raises_one_event_and_one_webhook_call_also_across_a_restart(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    redis_url: str,
    webhook: Webhook,
) -> None:
    await _setup(
        cluster_client, webhook, {"alerts": {"thresholds": [50, 90], "webhook": _webhook_on("alert-webhook")}}
    )
    settings = kc.operator_settings(redis_url=redis_url, usage_sync_interval_s=0.2)
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    key = await _new_key(
        cluster_client, "app", {"owner": {"team": "payments"}, "limits": {"tokensPerMonth": 300}}
    )

    access = kubesource.ApiAccess(server=str(kube_cluster.url))
    source = kubesource.KubernetesSource(kc.GATEWAY_NAMESPACE, access=access, debounce_s=0.02)
    async with (
        proxy_harness.run_proxy(source, redis_limits.RedisLimiter(redis_url)) as proxy,
        openai.AsyncOpenAI(api_key=key, base_url=proxy.url + "/v1", max_retries=0) as sdk,
    ):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:  # real traffic until the monthly token cap refuses (above 90% of it)
            try:
                await sdk.chat.completions.create(
                    model="mock-small", messages=[{"role": "user", "content": "hello"}], max_tokens=8
                )
            except openai.RateLimitError:
                break
            except (openai.AuthenticationError, openai.InternalServerError):  # key not seen yet
                await asyncio.sleep(0.05)
            assert loop.time() < deadline, "the cap never refused"
        await proxy.settled()

    def announced(o: dict[str, Any] | None) -> list[int]:
        return list(((o or {}).get("status", {}).get("alerts") or {}).get("thresholds") or [])

    vk = await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "app", lambda o: announced(o) == [50, 90])
    assert vk is not None and vk["status"]["alerts"]["period"] == datetime.now(UTC).strftime("%Y-%m")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while len(webhook.bodies) < 2 or len(_events(kube_cluster, "BudgetThreshold", "app")) < 2:
        assert loop.time() < deadline, (webhook.bodies, _events(kube_cluster, "BudgetThreshold", "app"))
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # five more sync passes: nothing new may be raised

    def check() -> None:
        messages = [e["message"] for e in _events(kube_cluster, "BudgetThreshold", "app")]
        assert len(messages) == 2 and "reached 50%" in messages[0] and "reached 90%" in messages[1]
        assert sorted(b["threshold"] for b in webhook.bodies) == [50, 90]
        assert all(b["kind"] == "BudgetThreshold" and b["resource"]["name"] == "app" for b in webhook.bodies)
        assert all(key.split("-")[-1] not in str(b) for b in webhook.bodies)  # never the key's secret

    check()
    ready = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "app", lambda o: kc.condition(o, "BudgetAlert") is not None
    )
    budget_alert = kc.condition(ready, "BudgetAlert")
    assert budget_alert is not None and budget_alert["status"] == "True"
    assert budget_alert["message"].startswith("reached 90% of a monthly cap")

    # The operator restarts: the recorded state in status keeps it from raising anything again.
    await operator_threads[0].stop()
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    await cluster_client.create(  # proof the new operator runs: it issues a key
        kc.VIRTUALKEYS,
        {
            "apiVersion": kc.GROUP_VERSION,
            "kind": "VirtualKey",
            "metadata": {"name": "probe", "namespace": NS},
            "spec": {},
        },
    )
    await cluster_client.wait_for(kc.SECRETS, NS, "probe-llm-key", lambda o: o is not None)
    await asyncio.sleep(1.0)
    check()


async def test_a_hanging_webhook_does_not_delay_reconciliation(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    redis_url: str,
    webhook: Webhook,
) -> None:
    webhook.hang = True
    await _setup(
        cluster_client, webhook, {"alerts": {"expiryWarning": "30d", "webhook": _webhook_on("alert-webhook")}}
    )
    settings = kc.operator_settings(redis_url=redis_url, usage_sync_interval_s=0.2)
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    # Expiring within the warning period: the warning goes to the webhook, which never answers.
    in_ten_days = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 10 * 86400, UTC)
    await _new_key(cluster_client, "expiring", {"expiresAt": in_ten_days.strftime("%Y-%m-%dT%H:%M:%SZ")})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while webhook.in_flight == 0:
        assert loop.time() < deadline, "the expiry warning never reached the webhook"
        await asyncio.sleep(0.05)
    assert len(_events(kube_cluster, "ExpiringSoon", "expiring")) == 1
    # While the webhook holds that request open, other keys are reconciled as usual.
    await _new_key(cluster_client, "other", {})
    ready = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "other", lambda o: (kc.condition(o, "Ready") or {}).get("status") == "True"
    )
    assert ready is not None and webhook.in_flight == 1 and webhook.bodies == []
    webhook.release.set()
    deadline = loop.time() + 10
    while not webhook.bodies:
        assert loop.time() < deadline
        await asyncio.sleep(0.05)
    assert [(b["kind"], b["expiresAt"]) for b in webhook.bodies] == [
        ("ExpiringSoon", in_ten_days.strftime("%Y-%m-%dT%H:%M:%SZ"))
    ]


async def test_an_idle_key_is_suspended_refused_and_reactivated_without_a_spec_write(
    kube_cluster: kc.LlmkeysKubernetesEmulator,
    cluster_client: kc.ClusterClient,
    operator_threads: list[kc.OperatorThread],
    redis_url: str,
    webhook: Webhook,
) -> None:
    await _setup(cluster_client, webhook, {"inactivity": {"warnAfter": "1s", "suspendAfter": "4s"}})
    settings = kc.operator_settings(redis_url=redis_url, usage_sync_interval_s=0.2)
    operator_threads.append(await kc.start_operator(str(kube_cluster.url), settings))
    spec = {"owner": {"user": "dev@example.com"}}
    key = await _new_key(cluster_client, "idle", spec)
    created = cluster_client.get(kc.VIRTUALKEYS, NS, "idle")
    assert created is not None

    def reason(o: dict[str, Any] | None) -> str | None:
        return (kc.condition(o, "Ready") or {}).get("reason")

    await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "idle", lambda o: reason(o) == "Active")
    idle = await cluster_client.wait_for(
        kc.VIRTUALKEYS, NS, "idle", lambda o: (kc.condition(o, "Idle") or {}).get("status") == "True"
    )
    assert idle is not None and reason(idle) == "Active"  # warned, not yet suspended
    inactive = await cluster_client.wait_for(kc.VIRTUALKEYS, NS, "idle", lambda o: reason(o) == "Inactive")
    assert "llmkeys.io/reactivated-at" in (kc.condition(inactive, "Ready") or {})["message"]

    access = kubesource.ApiAccess(server=str(kube_cluster.url))
    source = kubesource.KubernetesSource(kc.GATEWAY_NAMESPACE, access=access, debounce_s=0.02)
    async with (
        proxy_harness.run_proxy(source, redis_limits.RedisLimiter(redis_url)) as proxy,
        openai.AsyncOpenAI(api_key=key, base_url=proxy.url + "/v1", max_retries=0) as sdk,
    ):

        async def call() -> str:
            try:
                await sdk.chat.completions.create(
                    model="mock-small", messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
            except openai.APIStatusError as exc:
                return str((exc.body or {}).get("code") if isinstance(exc.body, dict) else exc.status_code)
            return "ok"

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while (outcome := await call()) != "key_inactive":
            assert loop.time() < deadline, outcome
            await asyncio.sleep(0.05)
        # Reactivation: an annotation on the VirtualKey (metadata), as a person or GitOps sets it.
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await cluster_client.patch(
            kc.VIRTUALKEYS, NS, "idle", {"metadata": {"annotations": {"llmkeys.io/reactivated-at": now}}}
        )
        deadline = loop.time() + 15
        while (outcome := await call()) != "ok":
            assert loop.time() < deadline, outcome
            await asyncio.sleep(0.05)

    assert len(_events(kube_cluster, "Inactive", "idle")) == 1
    assert len(_events(kube_cluster, "Idle", "idle")) >= 1  # again if it idles a second past reactivation
    after = cluster_client.get(kc.VIRTUALKEYS, NS, "idle")
    assert after is not None and after["spec"] == spec
    assert after["metadata"]["generation"] == created["metadata"]["generation"]  # no spec write at all
