"""Portal security over real HTTP: sign-in against a real OpenID Connect provider, sessions, CSRF,
redirects, ID-token checks and the impersonation headers sent to the (emulated) API server."""

from __future__ import annotations

from tests import portal_harness as ph

from llmkeys_operator.portal import oidc


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
