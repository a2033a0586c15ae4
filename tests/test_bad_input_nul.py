"""A NUL character in any query parameter or form field, at every front (OAuth, OIDC
logout, the login form, CAS), is one 400 on SQLite and PostgreSQL: PostgreSQL refuses NUL
in text, so before `web/limits.py` refused it, a client id or username carrying one failed
its lookup as a server error (500 at /token and /introspect, 503 at /authorize). A client id
with a NUL in Basic credentials is unusable credentials (`oidc/client_auth.py`)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import LiveServer
from tests.oidc_support import prepare, web_client

NUL = "a\x00b"
PKCE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def _requests(url: str) -> dict[str, Callable[[], httpx.Response]]:
    authorize = {
        "client_id": "oa",
        "response_type": "code",
        "redirect_uri": "http://127.0.0.1:9/cb",
        "scope": "openid",
        "code_challenge": PKCE,
        "code_challenge_method": "S256",
    }
    return {
        "token, Basic": lambda: httpx.post(
            url + "/token", data={"grant_type": "client_credentials"}, auth=(NUL, "x")
        ),
        "token, Basic, escaped": lambda: httpx.post(
            url + "/token", data={"grant_type": "client_credentials"}, auth=("a%00b", "x")
        ),
        "introspect, Basic": lambda: httpx.post(
            url + "/introspect", data={"token": "t"}, auth=(NUL, "x")
        ),
        "token, form": lambda: httpx.post(
            url + "/token",
            data={"grant_type": "client_credentials", "client_id": NUL, "client_secret": "x"},
        ),
        "token, code": lambda: httpx.post(
            url + "/token",
            data={"grant_type": "authorization_code", "client_id": "oa", "code": NUL},
        ),
        "introspect": lambda: httpx.post(url + "/introspect", data={"token": NUL}, auth=(NUL, "x")),
        "revoke": lambda: httpx.post(url + "/revoke", data={"token": NUL, "client_id": "oa"}),
        "authorize, client_id": lambda: httpx.get(
            url + "/authorize", params={**authorize, "client_id": NUL}
        ),
        "authorize, state": lambda: httpx.get(
            url + "/authorize", params={**authorize, "state": NUL}
        ),
        "authorize, post": lambda: httpx.post(url + "/authorize", data={**authorize, "nonce": NUL}),
        "logout": lambda: httpx.get(url + "/logout", params={"client_id": NUL}),
        "login": lambda: httpx.post(url + "/login", data={"username": NUL, "password": "x"}),
        "login page": lambda: httpx.get(url + "/login", params={"return_to": "/authorize?" + NUL}),
        "cas login": lambda: httpx.get(url + "/cas/login", params={"service": "http://x/" + NUL}),
        "cas validate": lambda: httpx.get(
            url + "/cas/serviceValidate", params={"service": "http://x/", "ticket": "ST-" + NUL}
        ),
        "audit": lambda: httpx.get(url + "/api/v1/audit", params={"actor": NUL}),
    }


@pytest.fixture
def live(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    server = make_live_server(db_url)
    prepare(server.services)
    web_client(server.services, "oa")
    return server


def test_nul_in_any_parameter_is_a_400(live: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for name, send in _requests(live.url).items():
        response = send()
        # Basic credentials are no parameter: a client id with a NUL is unusable (RFC 6749 5.2).
        status, error = (401, "invalid_client") if "Basic" in name else (400, "invalid_request")
        assert response.status_code == status, (name, response.status_code, response.text[:200])
        assert response.json()["error"] == error, name
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_nul_split_across_body_chunks_is_found(live: LiveServer) -> None:
    def chunks() -> object:
        yield b"grant_type=client_credentials&client_id=a%0"
        yield b"0b&client_secret=x"

    response = httpx.post(
        live.url + "/token",
        content=chunks(),  # type: ignore[arg-type]
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
