"""Introspection (RFC 7662), revocation (RFC 7009), the bearer helper (contract 3) and JWT
tampering, against a live server on both databases."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from joserfc import jwk, jwt

from idhub.core.audit import EventType
from idhub.oidc.tokens import InvalidToken
from tests.conftest import LiveServer
from tests.oidc_support import RP, issue_code, make_user, oauth_client, web_client


def _service_token(live: LiveServer, client_id: str = "svc", **kw: object) -> tuple[str, str]:
    _, secret = live.services.clients.register(
        client_id, grant_types=["client_credentials"], scope="authz audit:read", **kw
    )
    assert secret
    response = httpx.post(
        live.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": "authz"},
        auth=(client_id, secret),
    )
    assert response.status_code == 200
    return response.json()["access_token"], secret


def _introspect(
    live: LiveServer, token: str, auth: tuple[str, str], **extra: str
) -> httpx.Response:
    return httpx.post(live.url + "/introspect", data={"token": token, **extra}, auth=auth)


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_introspection_active_then_revoked(server: LiveServer) -> None:
    token, secret = _service_token(server)
    auth = ("svc", secret)
    active = _introspect(server, token, auth)
    assert active.status_code == 200
    body = active.json()
    assert body["active"] is True and body["client_id"] == "svc" and body["aud"] == "idhub"
    assert body["scope"] == "authz" and body["token_type"] == "Bearer" and body["exp"] > 0

    revoked = httpx.post(server.url + "/revoke", data={"token": token}, auth=auth)
    assert revoked.status_code == 200
    assert _introspect(server, token, auth).json() == {"active": False}
    with pytest.raises(InvalidToken):
        server.services.access_tokens.verify(token)
    # Revoking again, or revoking garbage, is still 200 (RFC 7009 2.2).
    assert httpx.post(server.url + "/revoke", data={"token": token}, auth=auth).status_code == 200
    assert httpx.post(server.url + "/revoke", data={"token": "zzz"}, auth=auth).status_code == 200
    bad_hint = httpx.post(
        server.url + "/revoke", data={"token": token, "token_type_hint": "id_token"}, auth=auth
    )
    assert bad_hint.status_code == 400 and bad_hint.json()["error"] == "unsupported_token_type"


def test_tampered_foreign_and_expired_tokens_are_inactive(server: LiveServer) -> None:
    token, secret = _service_token(server)
    auth = ("svc", secret)
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    # Same signature, changed claims.
    tampered = f"{head}.{_b64({**claims, 'scope': 'authz authz:admin'})}.{sig}"
    assert _introspect(server, tampered, auth).json() == {"active": False}
    # Signed by a key idhub never had, with idhub's kid and a fresh payload.
    foreign_key = jwk.generate_key("EC", "P-256")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    forged = jwt.encode(header, claims, foreign_key, algorithms=["ES256"])
    assert _introspect(server, forged, auth).json() == {"active": False}
    # alg "none".
    unsigned = f"{_b64({'typ': 'at+jwt', 'alg': 'none', 'kid': header['kid']})}.{body}."
    assert _introspect(server, unsigned, auth).json() == {"active": False}
    # Expired: a real token whose exp passed (signed with idhub's key through the issuer).
    client = server.services.clients.get("svc")
    assert client is not None
    expired, _ = server.services.access_tokens.issue(
        client, sub="svc", audience="idhub", scopes=["authz"], extra={"exp": 1_000_000}
    )
    assert _introspect(server, expired, auth).json() == {"active": False}
    # An ID-token-shaped value and plain garbage.
    assert _introspect(server, "abc", auth).json() == {"active": False}
    from sqlalchemy import select

    from idhub.adapters.db import audit_events

    with server.services.engine.connect() as conn:
        reasons = [
            json.loads(r.details)["reason"]
            for r in conn.execute(
                select(audit_events).where(
                    audit_events.c.event_type == EventType.TOKEN_INTROSPECTED_INACTIVE.value
                )
            )
        ]
    assert "bad signature" in reasons and "expired" in reasons and len(reasons) == 5


def test_introspection_needs_client_auth_and_hides_other_clients_tokens(server: LiveServer) -> None:
    token, _ = _service_token(server)
    response = httpx.post(server.url + "/introspect", data={"token": token})
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
    _, other_secret = server.services.clients.register(
        "nosy", grant_types=["client_credentials"], scope="read"
    )
    assert _introspect(server, token, ("nosy", other_secret or "")).json() == {"active": False}
    missing = httpx.post(server.url + "/introspect", data={}, auth=("nosy", other_secret or ""))
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_refresh_token_introspection_and_revocation(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    token = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    auth = ("oa", secret or "")
    refresh = token["refresh_token"]
    body = _introspect(server, refresh, auth, token_type_hint="refresh_token").json()
    assert body["active"] is True and body["sub"] == user.sub and body["client_id"] == "oa"
    user_access = _introspect(server, token["access_token"], auth).json()
    assert user_access["active"] is True and user_access["sub"] == user.sub
    assert httpx.post(server.url + "/revoke", data={"token": refresh}, auth=auth).status_code == 200
    assert _introspect(server, refresh, auth).json() == {"active": False}
    gone = httpx.post(
        server.url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh},
        auth=auth,
    )
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"


def test_bearer_helper_for_idhub_apis(server: LiveServer) -> None:
    from starlette.requests import Request

    from idhub.web.bearer import BearerError, check_bearer

    token, _ = _service_token(server)
    claims = check_bearer(token, server.services, scope="authz")
    assert claims["aud"] == "idhub"
    with pytest.raises(BearerError) as exc:
        check_bearer(token, server.services, scope="audit:read")
    assert exc.value.status == 403 and exc.value.error == "insufficient_scope"
    response = exc.value.response()
    assert response.status_code == 403 and b"insufficient_scope" in response.body
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    with pytest.raises(BearerError) as exc:
        check_bearer(None, server.services, scope="authz")
    assert exc.value.status == 401 and "Bearer" in exc.value.response().headers["www-authenticate"]
    # A token for another audience is not good for idhub's APIs.
    client = server.services.clients.get("svc")
    assert client is not None
    other, _ = server.services.access_tokens.issue(
        client, sub="svc", audience="reimburse", scopes=["authz"]
    )
    with pytest.raises(BearerError) as exc:
        check_bearer(other, server.services, scope="authz")
    assert exc.value.status == 401
    # The async form used by routes reads the Authorization header itself.
    import asyncio

    from idhub.web.bearer import require_bearer

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    claims = asyncio.run(require_bearer(Request(scope), server.services, scope="authz"))
    assert claims["sub"] == "svc"


def test_tokens_of_a_disabled_or_removed_client_stop_counting_online(server: LiveServer) -> None:
    """An access token outlives its client's disabling or removal until `exp`. Whoever asks
    idhub online learns at once that it no longer counts: introspection answers inactive,
    userinfo refuses, idhub's own APIs refuse (`AccessTokens.verify`); enabled again, the
    token counts again (it was never revoked)."""
    services = server.services
    token, _ = _service_token(server)
    _, rs_secret = services.clients.register(
        "rs", grant_types=["client_credentials"], scope="read", default_audience="idhub"
    )
    auth = ("rs", rs_secret or "")
    assert _introspect(server, token, auth).json()["active"] is True
    services.clients.update("svc", disabled=True)
    assert _introspect(server, token, auth).json() == {"active": False}
    with pytest.raises(InvalidToken, match="client disabled"):
        services.access_tokens.verify(token)
    services.clients.update("svc", disabled=False)
    assert _introspect(server, token, auth).json()["active"] is True

    user = make_user(services)
    _, secret = web_client(services, "oa")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    tokens = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert httpx.get(server.url + "/userinfo", headers=bearer).status_code == 200
    services.clients.remove("oa")
    refused = httpx.get(server.url + "/userinfo", headers=bearer)
    assert refused.status_code == 401 and "invalid_token" in refused.headers["www-authenticate"]
