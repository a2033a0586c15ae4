"""Negative cases at the token side: each gets the RFC's error body, never a 500."""

from __future__ import annotations

import base64

import httpx
import pytest
from sqlalchemy import text

from idhub.oidc.messages import (
    AuthorizationErrorRedirect,
    AuthorizationPageError,
    OAuthRequestData,
)
from tests.conftest import LiveServer
from tests.oidc_support import RP, make_user, pkce_pair, web_client


def _secret_client(live: LiveServer) -> str:
    _, secret = live.services.clients.register(
        "svc", grant_types=["client_credentials"], scope="read"
    )
    assert secret
    return secret


def test_unsupported_grant_and_missing_parameters(server: LiveServer) -> None:
    secret = _secret_client(server)
    url = server.url + "/token"
    cases = [
        ({"grant_type": "password", "username": "a", "password": "b"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "unauthorized_client"),
    ]
    for form, error in cases:
        response = httpx.post(url, data=form, auth=("svc", secret))
        assert response.status_code == 400, form
        assert response.json()["error"] == error, form
        assert response.headers["content-type"].startswith("application/json")
    _, web_secret = web_client(server.services, "oa")
    auth = ("oa", web_secret or "")
    missing_code = httpx.post(url, data={"grant_type": "authorization_code"}, auth=auth)
    assert missing_code.status_code == 400 and missing_code.json()["error"] == "invalid_request"
    missing_refresh = httpx.post(url, data={"grant_type": "refresh_token"}, auth=auth)
    assert missing_refresh.json()["error"] == "invalid_request"
    unknown_code = httpx.post(
        url, data={"grant_type": "authorization_code", "code": "x"}, auth=auth
    )
    assert unknown_code.status_code == 400 and unknown_code.json()["error"] == "invalid_grant"
    # Not a form body at all.
    as_json = httpx.post(url, json={"grant_type": "client_credentials"}, auth=("svc", secret))
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    # GET is not a token request.
    assert httpx.get(url).status_code == 405
    # Basic credentials that are not UTF-8.
    garbled = "Basic " + base64.b64encode(b"\xff\xfe:secret").decode()
    for path in ("/token", "/introspect", "/revoke"):
        response = httpx.post(
            server.url + path,
            data={"grant_type": "client_credentials", "token": "x"},
            headers={"Authorization": garbled},
        )
        assert response.status_code == 401, path
        assert response.json()["error"] == "invalid_client"


def test_audit_failure_fails_the_token_request(server: LiveServer) -> None:
    secret = _secret_client(server)
    with server.services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        response = httpx.post(
            server.url + "/token", data={"grant_type": "client_credentials"}, auth=("svc", secret)
        )
    finally:
        with server.services.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.json()
    again = httpx.post(
        server.url + "/token", data={"grant_type": "client_credentials"}, auth=("svc", secret)
    )
    assert again.status_code == 200


def _authorize(server: LiveServer, **params: str) -> OAuthRequestData:
    return OAuthRequestData(
        "GET", server.url + "/authorize", {}, params, {k: [v] for k, v in params.items()}
    )


def test_authorization_request_validation(server: LiveServer) -> None:
    services = server.services
    make_user(services)
    web_client(services, "oa", allowed_audiences=["reimburse"])
    base = {"response_type": "code", "client_id": "oa", "redirect_uri": RP, "scope": "openid"}
    # Unknown client and unregistered redirect URI: an error page, never a redirect.
    with pytest.raises(AuthorizationPageError):
        services.oidc.validate_authorization(_authorize(server, **{**base, "client_id": "nope"}))
    for uri in (RP + "/", RP.upper(), RP + "?x=1", "http://evil.example/cb"):
        with pytest.raises(AuthorizationPageError):
            services.oidc.validate_authorization(
                _authorize(server, **{**base, "redirect_uri": uri})
            )
    with pytest.raises(AuthorizationPageError):
        services.oidc.validate_authorization(_authorize(server, **{**base, "redirect_uri": ""}))
    # Everything else goes back to the client with state and iss.
    _, challenge = pkce_pair()
    cases = [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"code_challenge": challenge, "code_challenge_method": "plain"}, "invalid_request"),
        ({"prompt": "none login"}, "invalid_request"),
        ({"max_age": "soon"}, "invalid_request"),
        ({"resource": "archive"}, "invalid_target"),
        ({"response_mode": "fragment"}, "invalid_request"),
    ]
    for change, error in cases:
        with pytest.raises(AuthorizationErrorRedirect) as exc:
            services.oidc.validate_authorization(
                _authorize(server, **{**base, **change, "state": "s"})
            )
        assert exc.value.error == error, change
        location = exc.value.response.location or ""
        assert location.startswith(RP + "?") and "state=s" in location and "iss=" in location
    repeated = OAuthRequestData(
        "GET",
        server.url + "/authorize",
        {},
        base,
        {**{k: [v] for k, v in base.items()}, "scope": ["openid", "profile"]},
    )
    with pytest.raises(AuthorizationErrorRedirect) as exc:
        services.oidc.validate_authorization(repeated)
    assert exc.value.error == "invalid_request"
    ok = services.oidc.validate_authorization(
        _authorize(
            server,
            **{
                **base,
                "scope": "openid email admin",
                "prompt": "login",
                "max_age": "60",
                "resource": "reimburse",
                "nonce": "n",
            },
        )
    )
    assert ok.scopes == ("openid", "email") and ok.prompt == frozenset({"login"})
    assert ok.max_age == 60 and ok.audience == "reimburse" and ok.nonce == "n"
    denied = services.oidc.error_redirect(ok, "login_required")
    assert denied.status == 302 and "error=login_required" in (denied.location or "")


def test_audit_failure_leaves_codes_and_refresh_tokens_usable(server: LiveServer) -> None:
    from tests.oidc_support import issue_code, oauth_client

    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    first = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    code = issue_code(services, "oa", user)
    auth = ("oa", secret or "")
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        refused_code = httpx.post(
            server.url + "/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP},
            auth=auth,
        )
        refused_refresh = httpx.post(
            server.url + "/token",
            data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            auth=auth,
        )
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    for response in (refused_code, refused_refresh):
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
    # The retry works: the code was not used up, the refresh token not rotated (no "reuse").
    again = client.fetch_token(server.url + "/token", grant_type="authorization_code", code=code)
    assert again["access_token"] and again["refresh_token"]
    refreshed = client.refresh_token(server.url + "/token", refresh_token=first["refresh_token"])
    assert refreshed["refresh_token"] != first["refresh_token"]
