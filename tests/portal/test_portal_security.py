"""Portal security over real HTTP: sign-in against a real OpenID Connect provider, sessions, CSRF,
redirects, ID-token checks and the impersonation headers sent to the (emulated) API server."""

from __future__ import annotations

import base64
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from tests import portal_harness as ph
from yarl import URL

from llmkeys_operator.portal import app, identity, oidc, session


async def test_sign_in_uses_pkce_state_and_nonce_and_sets_a_locked_down_cookie(
    idp: ph.IdentityProvider, portal: ph.Portal
) -> None:
    async with ph.cookie_session() as browser:
        answer = await ph.sign_in(browser, portal.url, "alice", next_path="/keys/new")
        assert answer.status == 302
        assert answer.headers["Location"] == "/keys/new"
        cookie = answer.cookies["llmkeys-portal"]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Lax"
        assert cookie["path"] == "/"
        assert 0 < int(cookie["max-age"]) <= portal.config.portal_session_max_age_s
        async with browser.get(portal.url + "/") as resp:
            assert resp.status == 200
            page = await resp.text()
        assert "alice@example.com" in page
    authorization = idp.authorizations[-1]
    assert authorization["response_type"] == "code"
    assert authorization["code_challenge_method"] == "S256"
    assert len(authorization["state"]) >= 32 and len(authorization["nonce"]) >= 32
    assert authorization["redirect_uri"] == portal.url + "/callback"
    token_request = idp.token_requests[-1]
    assert oidc.pkce_challenge(token_request["code_verifier"]) == authorization["code_challenge"]
    # Nothing secret in the URL the browser was sent to.
    assert ph.CLIENT_SECRET not in str(authorization) and "code_verifier" not in authorization


async def test_pages_without_a_session_redirect_to_sign_in(portal: ph.Portal) -> None:
    async with ph.cookie_session() as anonymous:
        for path in ("/", "/keys/new?namespace=team-a", "/keys/team-a/x", "/approvals", "/admin"):
            async with anonymous.get(portal.url + path, allow_redirects=False) as resp:
                assert resp.status == 302, path
                location = urlsplit(resp.headers["Location"])
                assert location.path == "/login" and parse_qs(location.query)["next"] == [path]
        async with anonymous.get(portal.url + "/login", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"].startswith(portal.config.issuer)


async def test_state_changing_forms_need_the_sessions_csrf_token(
    portal: ph.Portal, cluster: ph.RecordingEmulator
) -> None:
    await cluster.set_namespace("team-a")
    async with ph.cookie_session() as browser, ph.cookie_session() as other:
        await ph.sign_in(browser, portal.url, "alice")
        await ph.sign_in(other, portal.url, "bob")
        token = await ph.csrf_of(browser, portal.url + "/keys/new?namespace=team-a")
        foreign = await ph.csrf_of(other, portal.url + "/")
        form = {"namespace": "team-a", "name": "k1", "owner.team": "t"}
        for fields in ({}, {"csrf": ""}, {"csrf": "forged-" + token}, {"csrf": foreign}):
            async with browser.post(
                portal.url + "/keys/new", data={**form, **fields}, allow_redirects=False
            ) as resp:
                assert resp.status == 403, fields
                assert "Form refused" in await resp.text()
        # The right token from a foreign page (Origin of another site) is refused too.
        headers = {"Origin": "http://127.0.0.9:1"}
        async with browser.post(
            portal.url + "/keys/new", data={**form, "csrf": token}, headers=headers, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        async with browser.post(portal.url + "/logout", allow_redirects=False) as resp:
            assert resp.status == 403
        assert cluster.live_object("llmkeys.io/v1alpha1/virtualkeys", "team-a", "k1") is None
        # With the token the same form goes through.
        async with browser.post(
            portal.url + "/keys/new", data={**form, "csrf": token}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, await resp.text()
        assert cluster.live_object("llmkeys.io/v1alpha1/virtualkeys", "team-a", "k1") is not None


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "http:/evil.example",
        "/\tevil",
        "",
    ],
)
async def test_open_redirects_after_sign_in_are_refused(portal: ph.Portal, target: str) -> None:
    async with ph.cookie_session() as browser:
        answer = await ph.sign_in(browser, portal.url, "alice", next_path=target)
        assert answer.status == 302
        assert answer.headers["Location"] == "/"


def test_safe_next_keeps_local_paths_only() -> None:
    assert app.safe_next("/keys/team-a/x?tab=usage") == "/keys/team-a/x?tab=usage"
    for bad in ("//x", "/\\x", "https://x/", "x", "/\tx", "/x\\y", None):
        assert app.safe_next(bad) == "/"


async def test_tampered_or_foreign_session_cookies_are_refused(portal: ph.Portal) -> None:
    async with ph.cookie_session() as browser:
        answer = await ph.sign_in(browser, portal.url, "alice")
        sealed = answer.cookies["llmkeys-portal"].value
    flipped = sealed[:40] + ("A" if sealed[40] != "A" else "B") + sealed[41:]
    other_key = session.CookieCodec(
        "another-session-key-of-32-characters-x", max_age_s=3600, login_max_age_s=60
    )
    codec = portal.app[app.COOKIES]
    forged = other_key.seal_session(
        session.new_session(identity.Identity("admin@example.com", ("oidc:platform-admins",)))
    )
    expired = codec.seal_session(
        session.new_session(
            identity.Identity("alice@example.com"),
            now=time.time() - 2 * portal.config.portal_session_max_age_s,
        )
    )
    for cookie in (flipped, sealed[:-4], forged, expired, "not-a-cookie"):
        async with ph.cookie_session() as browser:
            browser.cookie_jar.update_cookies({"llmkeys-portal": cookie}, URL(portal.url))
            async with browser.get(portal.url + "/", allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"].startswith("/login"), cookie[:20]
    async with ph.cookie_session() as browser:
        browser.cookie_jar.update_cookies({"llmkeys-portal": sealed}, URL(portal.url))
        async with browser.get(portal.url + "/", allow_redirects=False) as resp:
            assert resp.status == 200  # the untouched cookie works: the refusals above are not blanket


async def _id_token(idp: ph.IdentityProvider, client_id: str, nonce: str, host: str | None = None) -> str:
    """A real ID token from the provider for `client_id` (optionally asked under another Host name,
    which changes the issuer it writes)."""
    headers = {"Host": host} if host else {}
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": "http://127.0.0.1:1/cb",
        "scope": "openid email", "state": "s", "nonce": nonce,
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=idp.url, headers=headers) as http:
        answer = await http.post("/oauth2/authorize", params=params, data={"sub": "alice"})
        code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
        token = await http.post(
            "/oauth2/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1:1/cb"},
            auth=(client_id, "secret"),
        )
        return str(token.json()["id_token"])


async def test_id_tokens_for_another_audience_nonce_or_issuer_or_with_a_bad_signature_are_refused(
    idp: ph.IdentityProvider,
) -> None:
    client = oidc.OidcClient(ph.portal_settings(idp, 1))
    try:
        good = await _id_token(idp, ph.CLIENT_ID, "nonce-1")
        claims = await client.validate_id_token(good, "nonce-1")
        assert claims["email"] == "alice@example.com"
        port = urlsplit(idp.url).port
        cases = {
            "aud": (await _id_token(idp, "another-client", "nonce-1"), "nonce-1"),
            "nonce": (good, "nonce-2"),
            "iss": (await _id_token(idp, ph.CLIENT_ID, "nonce-1", host=f"localhost:{port}"), "nonce-1"),
        }
        for claim, (token, nonce) in cases.items():
            with pytest.raises(oidc.SignInError, match=claim):
                await client.validate_id_token(token, nonce)
        header, payload, signature = good.split(".")
        tampered = ".".join(
            [header, payload, signature[:-6] + ("AAAAAA" if signature[-6:] != "AAAAAA" else "BBBBBB")]
        )
        with pytest.raises(oidc.SignInError, match="signature"):
            await client.validate_id_token(tampered, "nonce-1")
        # A token "signed" with HS256 and no key is never accepted (asymmetric algorithms only).
        unsigned = ".".join([base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("="), payload, ""])
        with pytest.raises(oidc.SignInError):
            await client.validate_id_token(unsigned, "nonce-1")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("claims", "prefix", "refused"),
    [
        ({"email": "system:admin"}, "", "username may not start with 'system:'"),
        ({"email": "alice@example.com", "groups": ["system:masters"]}, "", "group may not start"),
        ({"email": "alice@example.com", "groups": ["system:masters"]}, "oidc:", None),
    ],
)
def test_identities_reserved_by_kubernetes_are_never_impersonated(
    claims: dict[str, object], prefix: str, refused: str | None
) -> None:
    def build() -> identity.Identity:
        return identity.from_claims(
            claims,
            username_claim="email",
            username_prefix="",
            groups_claim="groups",
            groups_prefix=prefix,
        )

    if refused is None:
        assert build().groups == ("oidc:system:masters",)
    else:
        with pytest.raises(identity.IdentityError, match=refused):
            build()
