"""Whole sign-in flows driven by authlib's OAuth client against idhub served by uvicorn, with a
browser stand-in (httpx with a cookie jar) posting the real login form. SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from authlib.common.security import generate_token

from idhub.core.sessions import COOKIE_NAME
from tests.conftest import LiveServer
from tests.sso_support import (
    events,
    follow,
    make_user,
    oauth_client,
    query_of,
    register_client,
    sign_in_at,
    validate_id_token,
)

# authlib's httpx integration announces its move to httpx2; that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")


def _authorization_url(client: object, issuer: str, **extra: str) -> tuple[str, str, str]:
    verifier = generate_token(48)
    nonce = secrets.token_urlsafe(16)
    url, _state = client.create_authorization_url(  # type: ignore[attr-defined]
        f"{issuer}/authorize", code_verifier=verifier, nonce=nonce, **extra
    )
    return url, verifier, nonce


def test_code_flow_with_pkce_and_id_token(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    alice = make_user(
        services,
        "alice",
        "alice-password-1",
        display_name="王小丽",
        department_path="/总部/华东区/销售一部",
        email="alice@example.com",
    )
    _client, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret)
    url, verifier, nonce = _authorization_url(oa, issuer)
    with httpx.Client(base_url=issuer) as browser:
        login_page = follow(browser, url)
        assert login_page.status_code == 200 and "OA" in login_page.text
        callback = sign_in_at(browser, login_page, "alice", "alice-password-1")
    assert callback.status_code == 302
    location = callback.headers["location"]
    assert location.startswith("http://127.0.0.1:8001/callback?")
    params = query_of(location)
    assert params["iss"] == issuer and params["state"] and params["code"]
    token = oa.fetch_token(
        f"{issuer}/token", authorization_response=location, code_verifier=verifier
    )
    claims = validate_id_token(issuer, token["id_token"], client_id="oa", nonce=nonce)
    assert claims["sub"] == alice.sub
    session = services.sessions.active_for_user(alice.id)[0]
    assert claims["sid"] == session.sid and session.clients == ("oa",)
    assert abs(claims["auth_time"] - session.auth_time) < 1.5
    assert claims["name"] == "王小丽" and claims["department"] == "/总部/华东区/销售一部"
    userinfo = oa.get(f"{issuer}/userinfo").json()
    assert userinfo["sub"] == alice.sub


def test_single_sign_on_across_two_systems(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "bob", "bob-password-1")
    _, oa_secret = register_client(services, "oa", port=8001)
    _, rb_secret = register_client(services, "reimburse", port=8002)
    oa = oauth_client(issuer, "oa", oa_secret, port=8001)
    rb = oauth_client(issuer, "reimburse", rb_secret, port=8002)
    with httpx.Client(base_url=issuer) as browser:
        url, _, _ = _authorization_url(oa, issuer)
        first = sign_in_at(browser, follow(browser, url), "bob", "bob-password-1")
        assert first.headers["location"].startswith("http://127.0.0.1:8001/callback?code=")
        # The second system: straight back with a code, no login page.
        url2, verifier2, nonce2 = _authorization_url(rb, issuer)
        second = follow(browser, url2)
    assert second.status_code == 302, second.text[:300]
    location = second.headers["location"]
    assert location.startswith("http://127.0.0.1:8002/callback?") and "code=" in location
    token = rb.fetch_token(
        f"{issuer}/token", authorization_response=location, code_verifier=verifier2
    )
    claims = validate_id_token(issuer, token["id_token"], client_id="reimburse", nonce=nonce2)
    bob = services.identity.get_user_by_username("bob")
    assert bob is not None
    (session,) = services.sessions.active_for_user(bob.id)
    assert claims["sid"] == session.sid and set(session.clients) == {"oa", "reimburse"}
    assert len(events(services, "login.succeeded")) == 1


def test_prompt_none_with_and_without_a_session(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "carol", "carol-password-1")
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret)
    with httpx.Client(base_url=issuer) as browser:
        url, _, _ = _authorization_url(oa, issuer, prompt="none")
        refused = follow(browser, url)
        assert refused.status_code == 302
        params = query_of(refused.headers["location"])
        assert params["error"] == "login_required" and params["iss"] == issuer
        assert params["state"] == query_of(url)["state"]
        sign_in_at(
            browser, follow(browser, _authorization_url(oa, issuer)[0]), "carol", "carol-password-1"
        )
        url, verifier, nonce = _authorization_url(oa, issuer, prompt="none")
        silent = follow(browser, url)
    assert silent.status_code == 302 and "code" in query_of(silent.headers["location"])
    token = oa.fetch_token(
        f"{issuer}/token", authorization_response=silent.headers["location"], code_verifier=verifier
    )
    validate_id_token(issuer, token["id_token"], client_id="oa", nonce=nonce)


def test_prompt_login_and_max_age_ask_again(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "dave", "dave-password-1")
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret)
    with httpx.Client(base_url=issuer) as browser:
        sign_in_at(
            browser, follow(browser, _authorization_url(oa, issuer)[0]), "dave", "dave-password-1"
        )
        first_auth = services.sessions.resolve(browser.cookies[COOKIE_NAME]).auth_time  # type: ignore[union-attr]
        # prompt=login: the login page again although the session is fine ...
        url, verifier, nonce = _authorization_url(oa, issuer, prompt="login")
        page = follow(browser, url)
        assert page.status_code == 200 and 'name="password"' in page.text
        time.sleep(1.1)
        done = sign_in_at(browser, page, "dave", "dave-password-1")
        # ... and coming back from it yields a code (no loop), with a newer auth_time.
        assert done.status_code == 302 and "code=" in done.headers["location"]
        token = oa.fetch_token(
            f"{issuer}/token",
            authorization_response=done.headers["location"],
            code_verifier=verifier,
        )
        claims = validate_id_token(issuer, token["id_token"], client_id="oa", nonce=nonce)
        assert claims["auth_time"] > first_auth
        # max_age: a fresh enough session passes silently, an older one must sign in again.
        fresh = follow(browser, _authorization_url(oa, issuer, max_age="60")[0])
        assert fresh.status_code == 302 and "code=" in fresh.headers["location"]
        time.sleep(2.1)
        stale = follow(browser, _authorization_url(oa, issuer, max_age="1")[0])
        assert stale.status_code == 200 and 'name="password"' in stale.text
        none_stale = follow(browser, _authorization_url(oa, issuer, max_age="1", prompt="none")[0])
        assert query_of(none_stale.headers["location"])["error"] == "login_required"
        again = sign_in_at(browser, stale, "dave", "dave-password-1")
    assert again.status_code == 302 and "code=" in again.headers["location"]
    assert len(events(services, "login.succeeded")) == 3


def test_login_hint_prefills_and_mismatch_asks_again(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "erin", "erin-password-1")
    make_user(services, "frank", "frank-password-1")
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret)
    with httpx.Client(base_url=issuer) as browser:
        page = follow(browser, _authorization_url(oa, issuer, login_hint="erin")[0])
        assert 'value="erin"' in page.text
        sign_in_at(browser, page, "erin", "erin-password-1")
        same = follow(browser, _authorization_url(oa, issuer, login_hint="erin")[0])
        other = follow(browser, _authorization_url(oa, issuer, login_hint="frank")[0])
    assert same.status_code == 302
    assert other.status_code == 200 and 'value="frank"' in other.text


def test_unknown_client_and_bad_redirect_uri_never_redirect(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    register_client(services, "oa")
    with httpx.Client(base_url=issuer, headers={"Accept-Language": "en"}) as browser:
        unknown = browser.get(
            "/authorize",
            params={
                "client_id": "nope",
                "response_type": "code",
                "scope": "openid",
                "redirect_uri": "http://127.0.0.1:8001/callback",
            },
        )
        bad = browser.get(
            "/authorize",
            params={
                "client_id": "oa",
                "response_type": "code",
                "scope": "openid",
                "redirect_uri": "http://127.0.0.1:8001/callback/../evil",
            },
        )
        wrong_scope = browser.get(
            "/authorize",
            params={
                "client_id": "oa",
                "response_type": "token",
                "scope": "openid",
                "state": "s1",
                "redirect_uri": "http://127.0.0.1:8001/callback",
            },
        )
    for page in (unknown, bad):
        assert page.status_code == 400 and "location" not in page.headers
        assert "text/html" in page.headers["content-type"]
    assert "not registered" in unknown.text
    assert "does not match" in bad.text
    # Other errors go back to the (validated) redirect URI with state and iss.
    assert wrong_scope.status_code == 302
    params = query_of(wrong_scope.headers["location"])
    assert params["error"] == "unsupported_response_type" and params["state"] == "s1"
    assert params["iss"] == issuer


def test_consent_for_third_party_clients_is_asked_once(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "gina", "gina-password-1")
    _, secret = register_client(services, "vendor", port=8009, first_party=False)
    vendor = oauth_client(issuer, "vendor", secret, port=8009)
    with httpx.Client(base_url=issuer, headers={"Accept-Language": "zh-CN"}) as browser:
        url, verifier, nonce = _authorization_url(vendor, issuer)
        silent = follow(browser, _authorization_url(vendor, issuer, prompt="none")[0])
        assert query_of(silent.headers["location"])["error"] == "login_required"
        consent = sign_in_at(browser, follow(browser, url), "gina", "gina-password-1")
        assert consent.status_code == 200 and "授权确认" in consent.text
        none_consent = follow(browser, _authorization_url(vendor, issuer, prompt="none")[0])
        assert query_of(none_consent.headers["location"])["error"] == "consent_required"
        from tests.sso_support import hidden_fields

        fields = hidden_fields(consent.text)
        # Without the CSRF token the decision is refused.
        forged = browser.post(
            "/authorize", data={**fields, "csrf_token": "x", "idhub_consent": "allow"}
        )
        assert forged.status_code == 400
        denied_fields = dict(fields)
        denied = browser.post("/authorize", data={**denied_fields, "idhub_consent": "deny"})
        assert query_of(denied.headers["location"])["error"] == "access_denied"
        allowed = browser.post("/authorize", data={**fields, "idhub_consent": "allow"})
        assert allowed.status_code == 302 and "code=" in allowed.headers["location"]
        token = vendor.fetch_token(
            f"{issuer}/token",
            authorization_response=allowed.headers["location"],
            code_verifier=verifier,
        )
        validate_id_token(issuer, token["id_token"], client_id="vendor", nonce=nonce)
        # Remembered: the next request goes straight through.
        remembered = follow(browser, _authorization_url(vendor, issuer)[0])
    assert remembered.status_code == 302 and "code=" in remembered.headers["location"]
    decisions = [e["details"]["decision"] for e in events(services, "consent.granted")]
    assert decisions == ["deny", "allow"]
