"""RFC 6749 strictness and odd input over real HTTP: repeated parameters, more than one way of
authenticating a client, unusable Basic credentials, a reused code revoking the access tokens
it produced, request objects answered at the redirect URI, and bodies, cursors and numbers
the APIs refuse with a 400 instead of failing."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer
from tests.oidc_support import RP, issue_code, make_user, prepare, web_client

ADMIN_TOML = '[server]\nadmin_clients = ["auditor"]\n'


@pytest.fixture
def live(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    server = make_live_server(sqlite_db_url, toml=ADMIN_TOML)
    prepare(server.services)
    return server


def _service(live: LiveServer, known: KnownSecrets, client_id: str = "svc", **kw: str) -> str:
    kw.setdefault("scope", "read")
    _, secret = live.services.clients.register(client_id, grant_types=["client_credentials"], **kw)
    assert secret
    known.add(secret)
    return secret


def _query(response: httpx.Response) -> dict[str, list[str]]:
    return parse_qs(urlsplit(response.headers["location"]).query)


# ------------------------------------------------------------------ repeated parameters


def test_repeated_parameters_at_the_token_endpoint(
    live: LiveServer, known_secrets: KnownSecrets
) -> None:
    secret = _service(live, known_secrets)
    for body in (
        "grant_type=client_credentials&scope=read&scope=read",
        "grant_type=client_credentials&grant_type=client_credentials",
    ):
        response = httpx.post(
            live.url + "/token",
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=("svc", secret),
        )
        assert response.status_code == 400, body
        assert response.json()["error"] == "invalid_request"
        assert "repeated" in response.json()["error_description"]
        assert response.headers["cache-control"] == "no-store"
    once = httpx.post(
        live.url + "/token", data={"grant_type": "client_credentials"}, auth=("svc", secret)
    )
    assert once.status_code == 200


def test_repeated_parameters_at_the_authorization_endpoint(live: LiveServer) -> None:
    web_client(live.services, "oa")
    base = "response_type=code&client_id=oa&scope=openid&state=st&redirect_uri=" + RP
    with httpx.Client(base_url=live.url) as browser:
        # Any parameter, not only the well-known ones.
        for extra in ("&display=page&display=popup", "&acr_values=1&acr_values=2"):
            response = browser.get("/authorize?" + base + extra)
            assert response.status_code == 302, extra
            query = _query(response)
            assert query["error"] == ["invalid_request"] and query["state"] == ["st"]
            assert query["iss"] == [live.url]
        # Which redirect URI would the error go to? Neither: a page.
        twice = browser.get("/authorize?" + base + "&redirect_uri=" + RP)
        assert twice.status_code == 400 and "location" not in twice.headers
        two_clients = browser.get("/authorize?" + base + "&client_id=oa")
        assert two_clients.status_code == 400 and "location" not in two_clients.headers


# ------------------------------------------------------------------ client authentication


def test_one_client_authentication_method_per_request(
    live: LiveServer, known_secrets: KnownSecrets
) -> None:
    secret = _service(live, known_secrets)
    other = _service(live, known_secrets, "other")
    url = live.url + "/token"
    form = {"grant_type": "client_credentials"}
    cases = {
        "basic and post": {"client_id": "svc", "client_secret": secret},
        "basic and another client's secret": {"client_id": "other", "client_secret": other},
        "basic and another client named": {"client_id": "other"},
        "basic and an assertion": {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": "a.b.c",
        },
    }
    for name, extra in cases.items():
        response = httpx.post(url, data={**form, **extra}, auth=("svc", secret))
        assert response.status_code == 400, name
        assert response.json()["error"] == "invalid_request", name
    for path in ("/introspect", "/revoke"):
        both = httpx.post(
            live.url + path,
            data={"token": "x", "client_id": "svc", "client_secret": secret},
            auth=("svc", secret),
        )
        assert both.status_code == 400 and both.json()["error"] == "invalid_request", path
    # Each method on its own still works.
    assert httpx.post(url, data=form, auth=("svc", secret)).status_code == 200
    post_secret = _service(
        live, known_secrets, "poster", token_endpoint_auth_method="client_secret_post"
    )
    posted = httpx.post(url, data={**form, "client_id": "poster", "client_secret": post_secret})
    assert posted.status_code == 200, posted.text


def test_unusable_basic_credentials_are_invalid_client(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # (Trailing spaces are stripped on the wire: `Basic ` arrives as `Basic`.)
    headers = [
        b"Basic",
        b"basic",
        b"Basic !!!!",
        b"Basic ====",
        b"Basic " + base64.b64encode(b"no-colon"),
        b"Basic " + base64.b64encode(b":secret"),
        b"Basic \xc3\xa4\xc3\xb6",
    ]
    for path in ("/token", "/introspect", "/revoke"):
        for value in headers:
            response = httpx.post(
                live.url + path,
                data={"grant_type": "client_credentials", "token": "x"},
                headers={"Authorization": value},
            )
            assert response.status_code == 401, (path, value)
            assert response.json()["error"] == "invalid_client", (path, value)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ code reuse


@pytest.fixture
def any_db_live(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    server = make_live_server(db_url)
    prepare(server.services)
    return server


class _OverHttp:
    """The client `oa` and a user at a live server: codes, the token endpoint, introspection."""

    def __init__(self, live: LiveServer, known_secrets: KnownSecrets) -> None:
        self.live = live
        _, secret = web_client(live.services, "oa")
        assert secret
        known_secrets.add(secret)
        self.secret = secret
        self.user = make_user(live.services)

    def exchange_form(self, scope: str = "openid profile offline_access") -> dict[str, str]:
        code = issue_code(self.live.services, "oa", self.user, scope=scope)
        return {"grant_type": "authorization_code", "code": code, "redirect_uri": RP}

    def token(self, form: dict[str, str]) -> httpx.Response:
        return httpx.post(self.live.url + "/token", data=form, auth=("oa", self.secret))

    def refresh(self, token: str) -> httpx.Response:
        return self.token({"grant_type": "refresh_token", "refresh_token": token})

    def active(self, token: str) -> bool:
        answer = httpx.post(
            self.live.url + "/introspect", data={"token": token}, auth=("oa", self.secret)
        )
        return bool(answer.json()["active"])


def test_a_reused_code_revokes_the_access_tokens_it_produced(
    any_db_live: LiveServer, known_secrets: KnownSecrets
) -> None:
    live = any_db_live
    oa = _OverHttp(live, known_secrets)
    form = oa.exchange_form()
    first = oa.token(form)
    assert first.status_code == 200, first.text
    tokens = first.json()
    refreshed = oa.refresh(tokens["refresh_token"]).json()
    access = [tokens["access_token"], refreshed["access_token"]]

    def userinfo(token: str) -> int:
        answer = httpx.get(live.url + "/userinfo", headers={"Authorization": f"Bearer {token}"})
        return answer.status_code

    assert all(oa.active(token) for token in access)
    assert userinfo(access[0]) == 200
    again = oa.token(form)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert not any(oa.active(token) for token in access)
    assert userinfo(access[0]) == 401 and userinfo(access[1]) == 401
    assert not oa.active(refreshed["refresh_token"])
    stale = oa.refresh(refreshed["refresh_token"])
    assert stale.status_code == 400


def test_a_reused_refresh_token_revokes_the_access_tokens_of_its_family(
    any_db_live: LiveServer, known_secrets: KnownSecrets
) -> None:
    """The stolen copy of a rotated refresh token comes back: the family dies, and so do the
    access tokens it produced, the code's and the refreshes' (either holder may be the thief)."""
    oa = _OverHttp(any_db_live, known_secrets)
    first = oa.token(oa.exchange_form()).json()
    second = oa.refresh(first["refresh_token"]).json()
    # The successor is used, so the first token coming back is no retry within the grace
    # window (`[tokens] refresh_reuse_grace`) but reuse.
    third = oa.refresh(second["refresh_token"]).json()
    access = [first["access_token"], second["access_token"], third["access_token"]]
    assert all(oa.active(token) for token in access)
    reused = oa.refresh(first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert not any(oa.active(token) for token in access)
    assert oa.refresh(third["refresh_token"]).status_code == 400
    # Another grant of the same person and client is untouched.
    fresh = oa.token(oa.exchange_form(scope="openid")).json()
    assert oa.active(fresh["access_token"])


# ------------------------------------------------------------------ /authorize


def test_request_objects_are_refused_at_the_redirect_uri(live: LiveServer) -> None:
    web_client(live.services, "oa")
    params = {
        "response_type": "code",
        "client_id": "oa",
        "scope": "openid",
        "redirect_uri": RP,
        "state": "st",
    }
    with httpx.Client(base_url=live.url) as browser:
        by_value = browser.get(
            "/authorize", params={**params, "request": "eyJhbGciOiJub25lIn0.e30."}
        )
        by_reference = browser.get(
            "/authorize", params={**params, "request_uri": "https://rp.example/r"}
        )
        unknown_client = browser.get(
            "/authorize", params={**params, "client_id": "nobody", "request": "x"}
        )
    for response, error in (
        (by_value, "request_not_supported"),
        (by_reference, "request_uri_not_supported"),
    ):
        assert response.status_code == 302
        assert response.headers["location"].startswith(RP + "?")
        query = _query(response)
        assert query["error"] == [error] and query["state"] == ["st"]
        assert query["iss"] == [live.url]
    # The client is not known: no redirect anywhere.
    assert unknown_client.status_code == 400 and "location" not in unknown_client.headers


def test_odd_characters_in_authorization_parameters(
    live: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    web_client(live.services, "oa")
    base = {"client_id": "oa", "scope": "openid", "redirect_uri": RP, "state": "st"}
    odd = ["cödé", 'code"', "code'", "code<script>", "代码", "\x01", "code id_token\u2028"]
    with httpx.Client(base_url=live.url) as browser:
        for value in odd:
            for name in ("response_type", "prompt", "code_challenge_method", "scope", "nonce"):
                params = {**base, "response_type": "code", name: value}
                response = browser.get("/authorize", params=params)
                if name == "response_type":
                    assert _query(response)["error"] == ["unsupported_response_type"]
                assert response.status_code in (302, 303, 400), (name, value, response.text[:300])
                if response.status_code == 302:
                    assert response.headers["location"].startswith(RP + "?")
        weird_client = browser.get("/authorize", params={**base, "client_id": "ö\"'<"})
        assert weird_client.status_code == 400
    odd_grant = httpx.post(live.url + "/token", data={"grant_type": 'cödé"'}, auth=("oa", "x"))
    assert odd_grant.status_code == 400
    assert odd_grant.json()["error"] == "unsupported_grant_type"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ the decision API


def _api_token(live: LiveServer, known: KnownSecrets) -> str:
    secret = _service(live, known, "reimburse", scope="authz")
    response = httpx.post(
        live.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": "authz"},
        auth=("reimburse", secret),
    )
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    known.add(token)
    return token


def test_the_decision_api_checks_the_token_before_the_body(
    live: LiveServer, known_secrets: KnownSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = live.url + "/api/v1/authz/check"
    deep = b"[" * 100_000 + b"]" * 100_000
    # Without a token nothing is parsed: not even invalid JSON gets a 400.
    for body in (b"{not json", deep):
        anonymous = httpx.post(url, content=body, headers={"Content-Type": "application/json"})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "invalid_token"
    token = _api_token(live, known_secrets)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for body in (deep, b'{"requests": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 400, response.text[:200]
        assert response.json()["error"] == "invalid_request"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ the audit API


def test_out_of_range_audit_parameters_are_400(
    live: LiveServer, known_secrets: KnownSecrets, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secret = _service(live, known_secrets, "auditor", scope="audit:read")
    token = httpx.post(
        live.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": "audit:read"},
        auth=("auditor", secret),
    ).json()["access_token"]
    known_secrets.add(token)

    def cursor(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    cases = {
        "cursor": [cursor("asc:" + "9" * 30), cursor("desc:-5"), cursor("asc:1e5"), cursor("asc:")],
        "since": ["1e400", "nan", "-inf", "9" * 400, "99999999999999999999d"],
        "until": ["inf"],
        "limit": ["9" * 5000, "1e3", "-1"],
        "actor": ["user:\x00", "x" * 5000],
        "target": ["\x00"],
    }
    for name, values in cases.items():
        for value in values:
            response = httpx.get(
                live.url + "/api/v1/audit",
                params={name: value},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 400, (name, value[:40], response.text[:200])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
