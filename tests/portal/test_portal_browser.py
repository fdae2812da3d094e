"""The portal in real headless Chromium (Debian's, driven by Playwright) against a real OpenID Connect
provider, the real operator on the emulated cluster, and the real proxy called with the openai SDK.

One browser for the whole story; a screenshot of each page goes to tests/artifacts/portal/.
"""

from __future__ import annotations

import asyncio
import base64
import pathlib
import re
from typing import Any

import aiohttp
import openai
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from tests import kmock_cluster as kc
from tests import portal_harness as ph
from tests import proxy_harness
from tests.fakes import loopback

from llmkeys_proxy import kubesource
from llmkeys_proxy.limits import redis as redis_limits

CHROMIUM = pathlib.Path("/usr/bin/chromium")
ARTIFACTS = pathlib.Path(__file__).resolve().parents[1] / "artifacts" / "portal"
NS = "team-a"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing: run make setup")


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": kc.GROUP_VERSION, "kind": "LLMPolicy", "metadata": {"name": name}, "spec": spec}


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def signed_in_page(browser: Browser, portal: ph.Portal, sub: str) -> tuple[BrowserContext, Page]:
    """A fresh browser profile signed in as `sub` through the provider's own sign-in form."""
    context = await browser.new_context(viewport={"width": 1240, "height": 800})
    page = await context.new_page()
    alerts: list[str] = []
    page.on("dialog", lambda d: (alerts.append(d.message), asyncio.ensure_future(_answer(d))))
    page.alerts = alerts  # type: ignore[attr-defined]
    await page.goto(portal.url + "/")
    assert page.url.startswith(portal.config.issuer), "an anonymous visit goes to the identity provider"
    await page.fill("input[name=sub]", sub)
    await page.click("button[type=submit]:has-text('Authorize')")
    await page.wait_for_url(portal.url + "/")
    return context, page


async def _answer(dialog: Any) -> None:
    if dialog.type == "confirm":
        await dialog.accept()
    else:
        await dialog.dismiss()


def key_of(cluster: ph.RecordingEmulator, name: str) -> dict[str, Any] | None:
    return cluster.live_object(kc.VIRTUALKEYS, NS, name)


async def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def call_until_usable(key: str, base_url: str, times: int) -> None:
    async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as sdk:
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while sent < times:
            try:
                reply = await sdk.chat.completions.create(
                    model="mock-small", messages=[{"role": "user", "content": "hello"}], max_tokens=8
                )
                assert reply.choices[0].message.content
                sent += 1
            except openai.AuthenticationError:  # the proxy has not seen the key yet
                assert loop.time() < deadline, "the key never became usable"
                await asyncio.sleep(0.05)


async def test_self_service_story_in_chromium(
    idp: ph.IdentityProvider,
    cluster: ph.RecordingEmulator,
    operator_threads: list[kc.OperatorThread],
    redis_url: str,
) -> None:
    base = str(cluster.url)

    async with aiohttp.ClientSession() as http:
        admin_client = kc.ClusterClient(cluster, http)
        await admin_client.create(
            kc.CREDENTIALS,
            {
                "apiVersion": kc.GROUP_VERSION,
                "kind": "ProviderCredential",
                "metadata": {"name": "mock", "namespace": kc.GATEWAY_NAMESPACE},
                "spec": {"provider": "mock", "models": [{"name": "mock-*"}]},
            },
        )
        await admin_client.create(
            kc.POLICIES,
            policy(
                "self-service",
                allowedProviders=["mock"],
                allowedModels=["mock-small", "mock-large"],
                defaults={"requestsPerMinute": 30, "spendPerMonthUSD": "5"},
                maximums={"requestsPerMinute": 60, "spendPerMonthUSD": "20"},
                maxTTL="30d",
                requiredOwnerFields=["team"],
                selfService={"admins": {"groups": ["oidc:platform-admins"]}},
            ),
        )
        await admin_client.create(
            kc.POLICIES,
            policy(
                "team-b-approval",
                namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "team-b"}},
                approval={"required": True, "approvers": {"groups": ["oidc:approvers"]}},
            ),
        )
    limiter = redis_limits.RedisLimiter(redis_url)
    source = kubesource.KubernetesSource(
        kc.GATEWAY_NAMESPACE, access=kubesource.ApiAccess(server=base), debounce_s=0.02
    )
    async with proxy_harness.run_proxy(source, limiter) as proxy:
        settings = kc.operator_settings(
            redis_url=redis_url, usage_sync_interval_s=0.3, proxy_url=proxy.url, watch_namespaces=(NS,)
        )
        operator_threads.append(await kc.start_operator(base, settings))
        async with (
            ph.run_portal(ph.portal_settings(idp, loopback.free_port()), base) as portal,
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                await story(browser, portal, cluster, proxy)
            finally:
                await browser.close()

    # Every Kubernetes request of the portal impersonated exactly one signed-in person, with
    # exactly that person's groups (prefixed as the API server prefixes them).
    expected = {claims["email"]: tuple(f"oidc:{g}" for g in claims["groups"]) for claims in ph.USERS.values()}
    seen = cluster.seen_by_portal()
    assert seen, "the portal made no Kubernetes request"
    for request in seen:
        assert request.user in expected, request
        assert request.groups == expected[request.user], request
    assert {r.user for r in seen} == {
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dana@example.com",
    }


async def story(browser: Browser, portal: ph.Portal, cluster: ph.RecordingEmulator, proxy: Any) -> None:
    alice_ctx, alice = await signed_in_page(browser, portal, "alice")
    assert "You own no keys yet" in await alice.inner_text("main")
    await shot(alice, "01-my-keys-empty")

    # Create within policy: the form offers only what the policy allows, defaults filled in.
    await alice.click("text=New key")
    await alice.wait_for_url(re.compile(r".*/keys/new"))
    offered = await alice.eval_on_selector_all("input[name=models]", "els => els.map(e => e.value)")
    assert offered == ["mock-large", "mock-small"]
    assert await alice.eval_on_selector_all("input[name=providers]", "els => els.map(e => e.value)") == [
        "mock"
    ]
    rpm = alice.locator("input[name='limits.requestsPerMinute']")
    assert await rpm.get_attribute("max") == "60" and await rpm.input_value() == "30"
    ttls = await alice.eval_on_selector_all("#ttl option", "els => els.map(e => e.value)")
    assert ttls == ["", "1d", "7d", "30d"]
    await shot(alice, "02-new-key")

    hostile = "<script>alert('owned')</script><b>bold</b>"
    await alice.fill("input[name=name]", "alice-dev")
    await alice.fill("input[name=description]", hostile)
    await alice.fill("input[name='owner.team']", "payments")
    await alice.check("input[name=models][value=mock-small]")
    await alice.select_option("#ttl", "7d")
    # Asking above the maximum is refused by the server even when the browser lets it through.
    await alice.eval_on_selector("input[name='limits.requestsPerMinute']", "e => e.removeAttribute('max')")
    await alice.fill("input[name='limits.requestsPerMinute']", "61")
    await alice.click("#create")
    assert "exceeds the maximum 60" in await alice.inner_text("#errors")
    assert key_of(cluster, "alice-dev") is None
    await alice.fill("input[name='limits.requestsPerMinute']", "40")
    await alice.click("#create")
    await alice.wait_for_url(re.compile(r".*/keys/team-a/alice-dev/reveal"))
    key = (await alice.inner_text("#api-key")).strip()
    assert key.startswith("sk-llmk-")
    env = await alice.inner_text("#env-lines")
    assert f"export OPENAI_API_KEY={key}" in env and f"export OPENAI_BASE_URL={proxy.url}/v1" in env
    await shot(alice, "03-reveal-once")
    stored = key_of(cluster, "alice-dev")
    assert stored is not None and stored["spec"]["owner"] == {"user": "alice@example.com", "team": "payments"}
    assert (
        stored["spec"]["limits"] == {"requestsPerMinute": 40, "spendPerMonthUSD": "5"}
        and stored["spec"]["ttl"] == "7d"
    )
    secret = cluster.live_object(kc.SECRETS, NS, "alice-dev-llm-key")
    assert secret is not None and base64.b64decode(secret["data"]["api-key"]).decode() == key

    # Shown once: the same page again does not show it.
    await alice.reload()
    assert "Already shown" in await alice.inner_text("main")
    assert key not in await alice.content()

    # Call the proxy with the openai SDK; the usage appears on the key's page.
    await call_until_usable(key, proxy.url + "/v1", 2)
    await proxy.settled()
    await wait_until(
        lambda: (
            ((key_of(cluster, "alice-dev") or {}).get("status", {}).get("usage") or {})
            .get("day", {})
            .get("requests")
            == 2
        ),
        "usage in status",
    )
    await alice.goto(portal.url + "/keys/team-a/alice-dev")
    usage = await alice.inner_text("section.card:has(h2:text('Usage'))")
    assert "(2 requests)" in usage
    assert await alice.locator("svg.chart rect").count() == 31
    # The description holding HTML is shown as text: no element, no script run.
    assert await alice.inner_text(".description") == hostile
    assert await alice.locator(".description script, .description b").count() == 0
    assert alice.alerts == []  # type: ignore[attr-defined]
    await shot(alice, "04-key-detail")
    await alice.goto(portal.url + "/")
    assert "alice-dev" in await alice.inner_text("table.keys")
    await shot(alice, "05-my-keys")

    # Another user cannot see or touch it.
    bob_ctx, bob = await signed_in_page(browser, portal, "bob")
    assert "alice-dev" not in await bob.inner_text("main")
    response = await bob.goto(portal.url + "/keys/team-a/alice-dev")
    assert response is not None and response.status == 403
    assert "belongs to someone else" in await bob.inner_text("main")
    await shot(bob, "06-not-allowed")
    bob_csrf = await bob.get_attribute("input[name=csrf]", "value")
    for action in ("delete", "rotate", "suspend"):
        forged = await bob_ctx.request.post(
            f"{portal.url}/keys/team-a/alice-dev/{action}", form={"csrf": bob_csrf or ""}, max_redirects=0
        )
        assert forged.status == 403, action
    after = key_of(cluster, "alice-dev")
    assert after is not None and not after["spec"].get("suspended")
    assert "llmkeys.io/rotate" not in (after["metadata"].get("annotations") or {})

    # Rotate: a new key, shown once, under the same key id.
    await alice.goto(portal.url + "/keys/team-a/alice-dev")
    assert "keeps working for 1h" in await alice.inner_text("section.actions")
    await alice.click("#rotate")
    await alice.wait_for_url(re.compile(r".*/reveal"))
    rotated = (await alice.inner_text("#api-key")).strip()
    assert rotated.startswith("sk-llmk-") and rotated != key
    assert rotated.split("-")[2] == key.split("-")[2]
    await shot(alice, "07-rotated")
    await call_until_usable(rotated, proxy.url + "/v1", 1)

    # Suspend: the proxy refuses the key.
    await alice.goto(portal.url + "/keys/team-a/alice-dev")
    await alice.click("#suspend")
    await wait_until(
        lambda: (key_of(cluster, "alice-dev") or {})["spec"].get("suspended") is True, "suspended"
    )
    async with openai.AsyncOpenAI(api_key=rotated, base_url=proxy.url + "/v1", max_retries=0) as sdk:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                await sdk.chat.completions.create(
                    model="mock-small", messages=[{"role": "user", "content": "x"}]
                )
            except openai.PermissionDeniedError as exc:
                assert "suspended" in str(exc)
                break
            assert loop.time() < deadline, "the suspension never reached the proxy"
            await asyncio.sleep(0.05)

    # A platform admin sees every key.
    _dana_ctx, dana = await signed_in_page(browser, portal, "dana")
    await dana.goto(portal.url + "/admin?view=all")
    assert "alice-dev" in await dana.inner_text("table.keys")
    await dana.goto(portal.url + "/admin?view=top&by=team")
    assert "payments" in await dana.inner_text("table.keys")
    await shot(dana, "08-admin-top-spenders")
    response = await bob.goto(portal.url + "/admin")
    assert response is not None and response.status == 403

    # Approval: a key in team-b needs an approver. The operator here serves team-a only; the test
    # writes the PendingApproval status the operator's approval enforcement writes, and checks the
    # portal's part: the queue, and the approval act as an annotation written as the approver.
    await alice.goto(portal.url + "/keys/new?namespace=team-b")
    assert "need approval by group oidc:approvers" in await alice.inner_text("main")
    await alice.fill("input[name=name]", "alice-b")
    await alice.fill("input[name='owner.team']", "payments")
    await alice.click("#create")
    await alice.wait_for_url(re.compile(r".*/keys/team-b/alice-b/reveal"))
    assert "Waiting for the key" in await alice.inner_text("main")
    pending = {
        "type": "Ready",
        "status": "False",
        "reason": "PendingApproval",
        "message": "waiting for approval",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    async with aiohttp.ClientSession() as http:
        await kc.ClusterClient(cluster, http).patch(
            kc.VIRTUALKEYS, "team-b", "alice-b", {"status": {"conditions": [pending]}}
        )
    await alice.reload()
    assert "(after approval)" in await alice.inner_text("main")
    await shot(alice, "09-waiting-for-approval")
    await bob.goto(portal.url + "/approvals")
    assert "Nothing waits for you" in await bob.inner_text("main")
    _carol_ctx, carol = await signed_in_page(browser, portal, "carol")
    await carol.goto(portal.url + "/approvals")
    assert "alice-b" in await carol.inner_text("table.keys")
    await carol.fill("input[name=reason]", "ticket OPS-42")
    await shot(carol, "10-approvals")
    await carol.click("button[value=approve]")
    await carol.wait_for_url(portal.url + "/approvals")
    annotations = cluster.live_object(kc.VIRTUALKEYS, "team-b", "alice-b")["metadata"]["annotations"]  # type: ignore[index]
    assert annotations["llmkeys.io/approval"] == "approve"
    assert annotations["llmkeys.io/approval-reason"] == "ticket OPS-42"
    patches = [r for r in cluster.seen_by_portal() if r.method == "PATCH" and r.path.endswith("/alice-b")]
    assert [(r.user, r.groups) for r in patches] == [("carol@example.com", ("oidc:approvers",))]
    forged = await bob_ctx.request.post(
        f"{portal.url}/keys/team-b/alice-b/approve", form={"csrf": bob_csrf or "", "decision": "approve"}
    )
    assert forged.status == 403

    # Delete (after the browser's confirmation): the key and, with it, its Secret go.
    await alice.goto(portal.url + "/keys/team-a/alice-dev")
    await alice.click("#delete")
    await alice.wait_for_url(portal.url + "/")
    await wait_until(lambda: key_of(cluster, "alice-dev") is None, "deletion")
    listed = await alice.inner_text("table.keys")
    assert "alice-dev" not in listed and "alice-b" in listed
    await alice_ctx.close()
    await bob_ctx.close()
