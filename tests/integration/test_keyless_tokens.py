"""Keyless keys at the proxy: workload tokens minted by loopback issuers (discovery + JWKS in the
real wire format) are verified, mapped to their key through the config, or refused with 401 and a
stable code; issuer key rotation, issuer outages, revoked bindings and the audit line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from tests import proxy_harness
from tests.fakes import oidc_issuer, tls

from llmkeys_proxy import config, identity, kubesource, settings, sources

NS = "team-a"
SA_BEARER = "pod-service-account-token"
REPO_SUBJECT = "repo:acme/payments:ref:refs/heads/main"
MOCK = config.ProviderEntry(id="llmkeys/mock", provider="mock", models=(config.ModelRoute(name="mock-*"),))


def keyless(name: str, *identities: config.Identity, **fields: Any) -> proxy_harness.IssuedKey:
    issued = proxy_harness.issue_key(name, NS, providers=("llmkeys/mock",), **fields)
    entry = issued.entry.model_copy(update={"hashes": (), "identities": identities})
    return proxy_harness.IssuedKey(issued.key, entry)


def service_account(name: str, namespace: str = NS) -> config.Identity:
    return config.Identity(
        issuer=config.KUBERNETES_ISSUER, subject=f"system:serviceaccount:{namespace}:{name}"
    )


@contextlib.asynccontextmanager
async def running(
    tmp_path: pathlib.Path, **verifier_options: Any
) -> AsyncIterator[tuple[Any, oidc_issuer.OidcIssuer, oidc_issuer.OidcIssuer, sources.StaticSource]]:
    """The cluster issuer (answers the pod's bearer token only), a GitHub-like issuer over HTTPS, and
    a proxy trusting both; keys: `app` (ServiceAccount team-a/app), `ci` (the repo's main branch)."""
    cluster = await oidc_issuer.OidcIssuer(required_bearer=SA_BEARER).start()
    files = tls.make_self_signed(tmp_path)
    github = oidc_issuer.OidcIssuer(keys=[oidc_issuer.rsa_key("gh-1")], ssl_context=files.server_context())
    await github.start()
    access = kubesource.ApiAccess(server=cluster.url, token=SA_BEARER)
    verifier = identity.TokenVerifier(
        [identity.IssuerSource.kubernetes(access), identity.IssuerSource.oidc(github.url, str(files.cert))],
        **{"min_refresh_interval_s": 0.3, **verifier_options},
    )
    app_key = keyless("app", service_account("app"), limits=config.Limits(requests_per_minute=100))
    ci_key = keyless(
        "ci",
        config.Identity(issuer=github.url, subject=REPO_SUBJECT, claims={"repository": "acme/payments"}),
    )
    source = sources.StaticSource(proxy_harness.proxy_config([app_key, ci_key], [MOCK]))
    try:
        async with proxy_harness.run_proxy(source, verifier=verifier) as proxy:
            yield proxy, cluster, github, source
    finally:
        await cluster.stop()
        await github.stop()


async def call(proxy: Any, token: str, header: str = "Authorization") -> tuple[int, dict[str, Any]]:
    value = f"Bearer {token}" if header == "Authorization" else token
    body = {"model": "mock-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json=body, headers={header: value}) as response,
    ):
        return response.status, await response.json()


def code_of(answer: dict[str, Any]) -> str:
    return str(answer["error"]["code"])


async def test_a_service_account_token_works_and_every_bad_token_gets_401_with_its_code(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path) as (proxy, cluster, github, _):
        good = cluster.service_account_token(NS, "app")
        with caplog.at_level(logging.INFO, logger="llmkeys.audit"):
            status, answer = await call(proxy, good)
            assert status == 200, answer
            await proxy.settled()
        audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "llmkeys.audit"]
        assert audit[-1]["identity"] == {
            "issuer": config.KUBERNETES_ISSUER,
            "subject": "system:serviceaccount:team-a:app",
        }
        assert audit[-1]["name"] == "app" and audit[-1]["status"] == 200
        assert good not in caplog.text and good.split(".")[2] not in caplog.text

        # ES256 tokens of the same issuer, and the token in every header a virtual key may use.
        es = cluster.service_account_token(NS, "app", key=cluster.keys[1])
        assert (await call(proxy, es))[0] == 200
        for header in ("x-api-key", "api-key", "x-goog-api-key"):
            assert (await call(proxy, good, header))[0] == 200, header

        now = int(time.time())
        base = cluster.claims("system:serviceaccount:team-a:app")
        other_key = oidc_issuer.rsa_key("rsa-1")  # the issuer's kid, another key
        refusals = {
            "wrong audience": (
                cluster.service_account_token(NS, "app", audience="vault"),
                "token_audience_invalid",
            ),
            "expired": (cluster.mint({**base, "exp": now - 120, "iat": now - 3720}), "token_expired"),
            "not yet valid (nbf)": (cluster.mint({**base, "nbf": now + 300}), "token_not_yet_valid"),
            "issued in the future": (cluster.mint({**base, "iat": now + 300}), "token_not_yet_valid"),
            "bad signature": (cluster.mint(base, key=other_key), "token_signature_invalid"),
            "tampered payload": (_tampered(good), "token_signature_invalid"),
            "unknown kid": (cluster.mint(base, kid="rsa-unknown"), "token_unknown_kid"),
            "alg none": (oidc_issuer.unsigned_token(base), "token_algorithm_not_allowed"),
            "HS256 keyed with the public key": (
                oidc_issuer.hs256_token(base, cluster.keys[0].public_pem(), "rsa-1"),
                "token_algorithm_not_allowed",
            ),
            "RS256 header on the EC key": (
                cluster.mint(base, kid="ec-1", alg="RS256"),
                "token_algorithm_not_allowed",
            ),
            "another namespace's account": (
                cluster.service_account_token("team-b", "app"),
                "token_not_bound",
            ),
            "an account bound to nothing": (cluster.service_account_token(NS, "batch"), "token_not_bound"),
            "no exp": (cluster.mint({k: v for k, v in base.items() if k != "exp"}), "token_invalid"),
            "untrusted issuer": (
                cluster.mint({**base, "iss": "https://evil.example"}),
                "token_issuer_untrusted",
            ),
            "not a JWT": ("eyJhbGciOi.bm90.anNvbg", "token_invalid"),
        }
        for case, (token, code) in refusals.items():
            status, answer = await call(proxy, token)
            assert (status, code_of(answer)) == (401, code), case

        # An external issuer: exact subject plus the required claims.
        ci = github.mint(github.claims(REPO_SUBJECT, repository="acme/payments", ref="refs/heads/main"))
        assert (await call(proxy, ci))[0] == 200
        fork = github.mint(github.claims(REPO_SUBJECT, repository="mallory/payments"))
        status, answer = await call(proxy, fork)
        assert (status, code_of(answer)) == (401, "token_not_bound")
        branch = github.mint(
            github.claims("repo:acme/payments:ref:refs/heads/dev", repository="acme/payments")
        )
        assert code_of((await call(proxy, branch))[1]) == "token_not_bound"
        assert cluster.requests["refused"] == 0  # the pod's token went with every fetch
        async with aiohttp.ClientSession() as session, session.get(f"{proxy.url}/readyz") as response:
            issuers = {i["name"]: i for i in (await response.json())["issuers"]}
        assert issuers[config.KUBERNETES_ISSUER]["issuer"] == cluster.url
        assert issuers[config.KUBERNETES_ISSUER]["keys"] == 2 and issuers[github.url]["error"] is None
        assert cluster.requests["jwks"] >= 1 and github.requests["jwks"] >= 1


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(oidc_issuer.base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:team-a:admin"
    return f"{header}.{oidc_issuer.b64url(json.dumps(claims).encode())}.{signature}"


async def test_removing_a_binding_stops_a_cached_token_and_models_list_works_with_a_token(
    tmp_path: pathlib.Path,
) -> None:
    async with running(tmp_path) as (proxy, cluster, _, source):
        token = cluster.service_account_token(NS, "app")
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(f"{proxy.url}/v1/models", headers=headers) as response:
                assert response.status == 200
                assert [m["id"] for m in (await response.json())["data"]] == []  # glob route only
        assert (await call(proxy, token))[0] == 200
        fetches = cluster.requests["jwks"]
        unbound = keyless("app")  # the same key without its identity
        source.set(proxy_harness.proxy_config([unbound], [MOCK]))
        status, answer = await call(proxy, token)
        assert (status, code_of(answer)) == (401, "token_not_bound")
        suspended = keyless("app", service_account("app"), suspended=True)
        source.set(proxy_harness.proxy_config([suspended], [MOCK]))
        status, answer = await call(proxy, token)
        assert (status, code_of(answer)) == (403, "key_suspended")
        assert cluster.requests["jwks"] == fetches  # the token stayed verified: no refetch


async def test_issuer_key_rotation_is_picked_up_and_unknown_kids_refresh_at_a_bounded_rate(
    tmp_path: pathlib.Path,
) -> None:
    async with running(tmp_path, min_refresh_interval_s=1.0) as (proxy, cluster, _, _source):
        old_token = cluster.service_account_token(NS, "app")
        assert (await call(proxy, old_token))[0] == 200
        await asyncio.sleep(1.1)  # the first fetch is no longer recent
        before = cluster.requests["jwks"]
        cluster.rotate(oidc_issuer.rsa_key("rsa-2"))
        new_token = cluster.service_account_token(NS, "app")
        assert (await call(proxy, new_token))[0] == 200  # unknown kid -> one refresh -> known
        assert cluster.requests["jwks"] == before + 1
        # The old key left the JWKS: tokens it signed stop working, cached or not.
        status, answer = await call(proxy, old_token)
        assert (status, code_of(answer)) == (401, "token_unknown_kid")
        # A flood of unknown kids costs at most one fetch per interval.
        flood = [
            cluster.mint(cluster.claims("system:serviceaccount:team-a:app"), kid=f"k{i}") for i in range(30)
        ]
        answers = await asyncio.gather(*(call(proxy, token) for token in flood))
        assert {(status, code_of(answer)) for status, answer in answers} == {(401, "token_unknown_kid")}
        assert cluster.requests["jwks"] <= before + 2


async def test_issuer_down_cached_keys_keep_working_and_without_keys_it_refuses_cleanly(
    tmp_path: pathlib.Path,
) -> None:
    async with running(tmp_path, min_refresh_interval_s=0.0) as (proxy, cluster, _, _source):
        assert (await call(proxy, cluster.service_account_token(NS, "app")))[0] == 200
        await cluster.stop()
        # A token never seen before, signed by a cached key: verified from the cached JWKS although
        # each unknown kid now tries (and fails) to refresh.
        assert (await call(proxy, cluster.service_account_token(NS, "app")))[0] == 200
        status, answer = await call(
            proxy, cluster.mint(cluster.claims("system:serviceaccount:team-a:app"), kid="x")
        )
        assert (status, code_of(answer)) == (401, "token_unknown_kid")

    # A proxy whose issuer is down from the start has no keys: 503 with Retry-After, never a 500.
    issuer = await oidc_issuer.OidcIssuer().start()
    token = issuer.service_account_token(NS, "app")
    await issuer.stop()
    verifier = identity.TokenVerifier(
        [identity.IssuerSource.kubernetes(kubesource.ApiAccess(server=issuer.url))],
        min_refresh_interval_s=0.5,
    )
    source = sources.StaticSource(
        proxy_harness.proxy_config([keyless("app", service_account("app"))], [MOCK])
    )
    async with proxy_harness.run_proxy(source, verifier=verifier) as proxy:
        for _ in range(3):
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{proxy.url}/v1/chat/completions",
                    json={"model": "mock-small", "messages": []},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response,
            ):
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "token_issuer_unavailable"
                assert response.headers["Retry-After"] == "1"
        # The issuer comes back: its iss is discovered and the token verifies.
        await issuer.start()
        await asyncio.sleep(0.6)
        assert (await call(proxy, token))[0] == 200
        await issuer.stop()


def test_issuer_settings_are_checked() -> None:
    ok = settings.ProxySettings.from_env(
        {
            "LLMKEYS_CONFIG_DIR": "/tmp/x",
            "LLMKEYS_TRUSTED_ISSUERS": "https://token.actions.githubusercontent.com, http://127.0.0.1:9000",
            "LLMKEYS_KUBERNETES_ISSUER": "off",
            "LLMKEYS_TOKEN_AUDIENCE": "gateway",
        }
    )
    assert ok.trusted_issuers == ("https://token.actions.githubusercontent.com", "http://127.0.0.1:9000")
    assert [s.name for s in identity.sources_from_settings(ok)] == list(ok.trusted_issuers)
    for env, message in (
        ({"LLMKEYS_TRUSTED_ISSUERS": "http://issuer.example"}, "LLMKEYS_TRUSTED_ISSUERS"),
        ({"LLMKEYS_KUBERNETES_ISSUER": "kubernetes.default.svc"}, "LLMKEYS_KUBERNETES_ISSUER"),
        ({"LLMKEYS_TOKEN_CLOCK_SKEW_S": "3600"}, "LLMKEYS_TOKEN_CLOCK_SKEW_S"),
    ):
        with pytest.raises(ValueError, match=message):
            settings.ProxySettings.from_env({"LLMKEYS_CONFIG_DIR": "/tmp/x", **env})


async def test_the_readme_sdk_snippets_send_the_token_file_with_every_request(tmp_path: pathlib.Path) -> None:
    import anthropic
    import openai
    from anthropic.lib.credentials import AccessToken

    async with running(tmp_path) as (proxy, cluster, _, _source):
        token_file = tmp_path / "token"
        token_file.write_text(cluster.service_account_token(NS, "app"))
        reads: list[str] = []

        def read_token() -> str:
            reads.append("openai")
            return token_file.read_text().strip()

        def claude_token(force_refresh: bool = False) -> AccessToken:
            reads.append("anthropic")
            return AccessToken(token_file.read_text().strip(), 0)

        client = openai.OpenAI(api_key=read_token, base_url=f"{proxy.url}/v1", max_retries=0)
        claude = anthropic.Anthropic(credentials=claude_token, base_url=proxy.url, max_retries=0)

        def calls() -> None:
            client.chat.completions.create(model="mock-small", messages=[{"role": "user", "content": "hi"}])
            claude.models.list()
            token_file.write_text(cluster.service_account_token(NS, "app", audience="elsewhere"))
            try:
                client.models.list()
                raise AssertionError("the rotated (wrong-audience) token was not sent")
            except openai.AuthenticationError as exc:
                assert exc.code == "token_audience_invalid"
            try:
                claude.models.list()
                raise AssertionError("the rotated (wrong-audience) token was not sent")
            except anthropic.AuthenticationError as exc:
                assert "audience" in str(exc)

        await asyncio.to_thread(calls)
        client.close()
        claude.close()
        assert reads.count("openai") >= 2 and reads.count("anthropic") >= 2
