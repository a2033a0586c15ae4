"""Header injection through redirect parameters: CR/LF in `redirect_uri`, `state`,
`post_logout_redirect_uri`, `return_to` and CAS `service`.

A value carrying CR/LF either is refused (it is not the registered URI, not a local path, not
a registered service) or, where it is echoed, leaves idhub percent-encoded: no answer ever has
a header the request wrote, a cookie it set, or a raw CR/LF in a header value.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer
from tests.sso_support import login, make_user, register_client

CALLBACK = "http://127.0.0.1:8001/callback"
LOGGED_OUT = "http://127.0.0.1:8001/logged-out"
CAS_APP = "http://127.0.0.1:8001/cas-app"
PASSWORD = "alice-password-1"
INJECTIONS = (
    "\r\nX-Injected: 1\r\nSet-Cookie: injected=1",
    "\nX-Injected: 1",
    "\rX-Injected: 1",
    "%0d%0aX-Injected:%201",
    "\u560d\u560aX-Injected: 1",  # U+560D/U+560A: their low bytes are CR and LF
)


def assert_not_injected(response: httpx.Response, where: object) -> None:
    for name, value in response.headers.raw:
        assert b"\r" not in value and b"\n" not in value, (where, name, value)
        assert name.lower() != b"x-injected", where
        if name.lower() == b"set-cookie":
            assert not value.startswith(b"injected="), where
    location = response.headers.get("location")
    if location is not None:
        assert "X-Injected: 1" not in location, where


@pytest.fixture
def live(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    server = make_live_server(sqlite_db_url)
    make_user(server.services, "alice", PASSWORD)
    register_client(server.services, "oa")
    server.services.cas_services.register("cas-app", urls=[CAS_APP], first_party=True)
    return server


def _authorize(redirect_uri: str, state: str = "st") -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "oa",
        "redirect_uri": redirect_uri,
        "scope": "openid",
        "state": state,
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }


def test_redirect_uri_and_state_at_authorize(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url) as browser:
        for payload in INJECTIONS:
            bad = browser.get("/authorize", params=_authorize(CALLBACK + payload))
            # Not the registered URI: an error page, never a redirect to it.
            assert bad.status_code == 400 and "location" not in bad.headers, payload
            assert_not_injected(bad, ("redirect_uri", payload))
            # An echoed state goes back percent-encoded (here with the login redirect's
            # return_to, and with an error at the registered redirect URI).
            echoed = browser.get("/authorize", params=_authorize(CALLBACK, state=payload))
            assert_not_injected(echoed, ("state", payload))
            refused = browser.get(
                "/authorize", params={**_authorize(CALLBACK, state=payload), "request": "x"}
            )
            assert refused.status_code == 302, payload
            assert_not_injected(refused, ("state on an error", payload))
            (state,) = parse_qs(urlsplit(refused.headers["location"]).query)["state"]
            assert state == payload


def test_post_logout_redirect_uri(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url) as browser:
        for payload in INJECTIONS:
            bad = browser.get(
                "/logout",
                params={"client_id": "oa", "post_logout_redirect_uri": LOGGED_OUT + payload},
            )
            assert bad.status_code == 400 and "location" not in bad.headers, payload
            assert_not_injected(bad, ("post_logout_redirect_uri", payload))
            echoed = browser.get(
                "/logout",
                params={
                    "client_id": "oa",
                    "post_logout_redirect_uri": LOGGED_OUT,
                    "state": payload,
                },
            )
            assert_not_injected(echoed, ("logout state", payload))
            if "location" in echoed.headers:
                (state,) = parse_qs(urlsplit(echoed.headers["location"]).query)["state"]
                assert state == payload


def test_return_to_at_login(live: LiveServer, known_secrets: KnownSecrets) -> None:
    known_secrets.add(PASSWORD)
    for payload in INJECTIONS:
        for return_to in (
            "/authorize?client_id=oa&x=" + payload,
            "/authorize" + payload,
            payload + "//evil.example/",
            "/" + payload + "/evil.example",
        ):
            with httpx.Client(base_url=live.url, headers={"Accept-Language": "en"}) as browser:
                page = browser.get("/login", params={"return_to": return_to})
                assert page.status_code == 200, (return_to, page.text[:200])
                assert_not_injected(page, ("login page", return_to))
                done = login(browser, "alice", PASSWORD, return_to=return_to)
                assert_not_injected(done, ("after sign-in", return_to))
                location = done.headers.get("location")
                if location is not None:
                    # Only ever back to idhub itself.
                    assert location.startswith("/") and not location.startswith("//")


def test_cas_service(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, headers={"Accept-Language": "en"}) as browser:
        for payload in INJECTIONS:
            for service in (CAS_APP + payload, CAS_APP + "/x?y=" + payload):
                asked = browser.get("/cas/login", params={"service": service})
                assert_not_injected(asked, ("cas login", service))
                out = browser.get("/cas/logout", params={"service": service})
                assert_not_injected(out, ("cas logout", service))
            raw = browser.get("/cas/login", params={"service": CAS_APP + payload})
            if any(c in payload for c in "\r\n"):
                # Not a URL idhub accepts: an error page, never a redirect.
                assert raw.status_code >= 400 and "location" not in raw.headers, payload
