"""/authorize edge cases over real HTTP on SQLite and PostgreSQL: POSTed requests, repeated or
bad parameters, public clients, ui_locales, and a forged return ticket."""

from __future__ import annotations

import httpx

from tests.conftest import LiveServer
from tests.sso_support import follow, hidden_fields, login, make_user, query_of, register_client

REDIRECT = "http://127.0.0.1:8001/callback"
CHALLENGE = "E9Melhoe2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # RFC 7636 appendix B


def _params(**extra: str) -> dict[str, str]:
    base = {
        "client_id": "oa",
        "response_type": "code",
        "scope": "openid",
        "redirect_uri": REDIRECT,
        "state": "st",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    base.update(extra)
    return base


def test_post_authorization_request_and_errors_redirect_with_iss(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "alice", "alice-password-1")
    register_client(services, "oa")
    with httpx.Client(base_url=issuer) as browser:
        login(browser, "alice", "alice-password-1")
        posted = browser.post("/authorize", data=_params())
        assert posted.status_code == 302 and "code" in query_of(posted.headers["location"])
        repeated = browser.get(
            "/authorize?" + httpx.QueryParams(_params()).__str__() + "&scope=openid"
        )
        both = browser.get("/authorize", params=_params(prompt="none login"))
        bad_age = browser.get("/authorize", params=_params(max_age="soon"))
        no_scope = browser.get("/authorize", params=_params(scope="payroll"))
    for response, error in (
        (repeated, "invalid_request"),
        (both, "invalid_request"),
        (bad_age, "invalid_request"),
        (no_scope, "invalid_scope"),
    ):
        assert response.status_code == 302, response.text[:200]
        params = query_of(response.headers["location"])
        assert params["error"] == error and params["iss"] == issuer and params["state"] == "st"
        assert response.headers["location"].startswith(REDIRECT + "?")


def test_missing_redirect_uri_or_client_shows_a_page(live_server: LiveServer) -> None:
    register_client(live_server.services, "oa")
    with httpx.Client(base_url=live_server.url, headers={"Accept-Language": "zh-CN"}) as browser:
        no_client = browser.get("/authorize", params={"response_type": "code"})
        no_redirect = browser.get("/authorize", params={"client_id": "oa", "response_type": "code"})
    for page in (no_client, no_redirect):
        assert page.status_code == 400 and "location" not in page.headers
        assert "<html" in page.text and "Traceback" not in page.text
    assert "未在 idhub 注册" in no_client.text


def test_public_clients_need_pkce(live_server: LiveServer) -> None:
    services = live_server.services
    services.keys.ensure_active(lambda _line: None)
    services.clients.register("spa", redirect_uris=[REDIRECT], public=True, scope="openid")
    with httpx.Client(base_url=live_server.url) as browser:
        without = browser.get(
            "/authorize",
            params={
                "client_id": "spa",
                "response_type": "code",
                "scope": "openid",
                "redirect_uri": REDIRECT,
            },
        )
        with_pkce = browser.get("/authorize", params=_params(client_id="spa"))
    assert query_of(without.headers["location"])["error"] == "invalid_request"
    assert with_pkce.status_code == 303 and with_pkce.headers["location"].startswith("/login?")


def test_ui_locales_and_forged_tickets(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    make_user(services, "bob", "bob-password-1")
    register_client(services, "oa")
    with httpx.Client(base_url=issuer) as browser:
        english = follow(
            browser, "/authorize?" + str(httpx.QueryParams(_params(ui_locales="en-US")))
        )
        assert english.status_code == 200 and '<html lang="en">' in english.text
        login(browser, "bob", "bob-password-1")
        # A hand-made "I just signed in" ticket does not get around prompt=login.
        forged = browser.get(
            "/authorize", params=_params(prompt="login", idhub_login_after="1.deadbeef")
        )
    assert forged.status_code == 303 and forged.headers["location"].startswith("/login?")


def test_odd_requests_never_fail_with_a_server_error(live_server: LiveServer) -> None:
    register_client(live_server.services, "oa")
    with httpx.Client(base_url=live_server.url) as browser:
        browser.cookies.set("idhub_session", "x" * 3000)
        answers = [
            browser.get("/authorize", params=_params()),
            browser.get("/authorize", params=_params(max_age="99999999999999999999999")),
            browser.get("/authorize", params=_params(state="ä" * 3000)),
            browser.post("/authorize", content=b"\xff\xfe", headers={"content-type": "text/plain"}),
            browser.post("/authorize", json={"client_id": "oa"}),
            browser.post("/authorize", files={"client_id": ("x.txt", b"oa")}),
            browser.post("/authorize", data={**_params(), "idhub_consent": "allow"}),
            browser.post("/login", json={"username": "a"}),
            browser.get("/login", params={"return_to": "//evil.example/authorize"}),
        ]
    for response in answers:
        assert response.status_code < 500, (response.request.url, response.text[:300])
    # The unsafe return_to is dropped (the language link may still echo it, escaped).
    assert hidden_fields(answers[-1].text)["return_to"] == ""
