"""Client credentials through authlib's own OAuth client, with every client-auth method."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from authlib.integrations.httpx_client import OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwk

from idhub.core.audit import EventType
from tests.conftest import LiveServer
from tests.oidc_support import decode, oauth_client


def _events(live: LiveServer, kind: EventType) -> list[dict[str, object]]:
    from sqlalchemy import select

    from idhub.adapters.db import audit_events

    with live.services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.event_type == kind.value)
        ).all()
    return [dict(r._mapping) for r in rows]


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_secret_methods_issue_an_rfc9068_token(server: LiveServer, method: str) -> None:
    _, secret = server.services.clients.register(
        "reimburse-batch",
        grant_types=["client_credentials"],
        scope="authz audit:read",
        token_endpoint_auth_method=method,
        allowed_audiences=["reimburse"],
    )
    client = oauth_client(server.url, "reimburse-batch", secret, method)
    token = client.fetch_token(
        server.url + "/token", grant_type="client_credentials", resource="idhub", scope="authz"
    )
    assert token["token_type"].lower() == "bearer" and token["expires_in"] == 600
    decoded = decode(token["access_token"], server.url)
    assert decoded.header["typ"] == "at+jwt" and decoded.header["alg"] == "ES256"
    claims = decoded.claims
    assert claims["aud"] == "idhub" and claims["sub"] == "reimburse-batch"
    assert claims["client_id"] == "reimburse-batch" and claims["scope"] == "authz"
    assert claims["iss"] == server.url and claims["exp"] - claims["iat"] == 600
    # Contract 3: the same token verifies for idhub's own APIs.
    assert server.services.access_tokens.verify(token["access_token"], audience="idhub")["jti"]
    # Without a resource the token is for the client's own audience.
    plain = client.fetch_token(server.url + "/token", grant_type="client_credentials")
    assert decode(plain["access_token"], server.url).claims["aud"] == "reimburse-batch"
    issued = _events(server, EventType.TOKEN_ISSUED)
    assert len(issued) == 2
    assert issued[0]["actor_id"] == "reimburse-batch"
    details = json.loads(str(issued[0]["details"]))
    assert details["grant_type"] == "client_credentials" and details["audience"] == "idhub"
    assert details["jti"] == decoded.claims["jti"]
    assert token["access_token"] not in str(issued)


def test_private_key_jwt_and_replay(server: LiveServer) -> None:
    key = jwk.generate_key("EC", "P-256", auto_kid=True)
    public = {"keys": [{**key.as_dict(private=False), "alg": "ES256"}]}
    server.services.clients.register(
        "erp",
        grant_types=["client_credentials"],
        scope="authz",
        token_endpoint_auth_method="private_key_jwt",
        jwks=public,
    )
    token_url = server.url + "/token"
    client = oauth_client(server.url, "erp", key, PrivateKeyJWT(token_url, alg="ES256"))
    token = client.fetch_token(token_url, grant_type="client_credentials", resource="idhub")
    assert decode(token["access_token"], server.url).claims["sub"] == "erp"
    # An assertion addressed to the issuer instead of the token endpoint is fine too.
    issuer_aud = oauth_client(server.url, "erp", key, PrivateKeyJWT(server.url, alg="ES256"))
    assert issuer_aud.fetch_token(token_url, grant_type="client_credentials")["access_token"]

    # Replaying one assertion: the second use is refused.
    from authlib.oauth2.rfc7523 import private_key_jwt_sign

    assertion = private_key_jwt_sign(key, "erp", token_url, alg="ES256")
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    assert httpx.post(token_url, data=form).status_code == 200
    replay = httpx.post(token_url, data=form)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"

    # A key the client never registered cannot sign for it.
    stranger = jwk.generate_key("EC", "P-256", auto_kid=True)
    bad = oauth_client(server.url, "erp", stranger, PrivateKeyJWT(token_url, alg="ES256"))
    with pytest.raises(OAuthError) as exc:
        bad.fetch_token(token_url, grant_type="client_credentials")
    assert exc.value.error == "invalid_client"
    # Wrong audience.
    wrong_aud = private_key_jwt_sign(key, "erp", "https://elsewhere.example/token", alg="ES256")
    response = httpx.post(token_url, data={**form, "client_assertion": wrong_aud})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    # Expired assertion.
    old = private_key_jwt_sign(
        key, "erp", token_url, alg="ES256", claims={"exp": int(time.time()) - 600}
    )
    response = httpx.post(token_url, data={**form, "client_assertion": old})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    # Garbage.
    response = httpx.post(token_url, data={**form, "client_assertion": "not.a.jwt"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_public_client_cannot_use_client_credentials(server: LiveServer) -> None:
    server.services.clients.register(
        "spa", public=True, redirect_uris=["http://127.0.0.1:9/cb"], scope="openid"
    )
    client = oauth_client(server.url, "spa", None, "none")
    with pytest.raises(OAuthError) as exc:
        client.fetch_token(server.url + "/token", grant_type="client_credentials")
    assert exc.value.error in ("invalid_client", "unauthorized_client")


def test_wrong_secret_is_401_with_basic_challenge(server: LiveServer) -> None:
    server.services.clients.register("svc", grant_types=["client_credentials"], scope="authz")
    response = httpx.post(
        server.url + "/token", data={"grant_type": "client_credentials"}, auth=("svc", "wrong")
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.headers["cache-control"] == "no-store"
    unknown = httpx.post(
        server.url + "/token", data={"grant_type": "client_credentials"}, auth=("nobody", "x")
    )
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    failed = _events(server, EventType.TOKEN_REQUEST_FAILED)
    assert [e["outcome"] for e in failed] == ["failure", "failure"]
    assert "wrong" not in str(failed)


def test_resource_and_scope_limits(server: LiveServer) -> None:
    _, secret = server.services.clients.register(
        "svc", grant_types=["client_credentials"], scope="read", allowed_audiences=["reimburse"]
    )
    url = server.url + "/token"
    ok = httpx.post(url, data={"grant_type": "client_credentials", "resource": "reimburse"},
                    auth=("svc", secret or ""))  # fmt: skip
    assert ok.status_code == 200
    assert decode(ok.json()["access_token"], server.url).claims["aud"] == "reimburse"
    target = httpx.post(url, data={"grant_type": "client_credentials", "resource": "archive"},
                        auth=("svc", secret or ""))  # fmt: skip
    assert target.status_code == 400 and target.json()["error"] == "invalid_target"
    # No idhub API scope registered: no token for idhub either.
    idhub = httpx.post(url, data={"grant_type": "client_credentials", "resource": "idhub"},
                       auth=("svc", secret or ""))  # fmt: skip
    assert idhub.status_code == 400 and idhub.json()["error"] == "invalid_target"
    scope = httpx.post(url, data={"grant_type": "client_credentials", "scope": "read admin"},
                       auth=("svc", secret or ""))  # fmt: skip
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_per_client_access_token_algorithm(server: LiveServer, alg: str) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.hashes import SHA256

    _, secret = server.services.clients.register(
        "svc", grant_types=["client_credentials"], scope="authz", access_token_alg=alg
    )
    response = httpx.post(
        server.url + "/token", data={"grant_type": "client_credentials"}, auth=("svc", secret or "")
    )
    token = response.json()["access_token"]
    head, body, sig = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    assert header["alg"] == alg and header["typ"] == "at+jwt"
    # Verify against the published JWKS with the raw primitives, as a relying party would.
    published = {k["kid"]: k for k in httpx.get(server.url + "/jwks").json()["keys"]}
    key = jwk.import_key(published[header["kid"]])
    assert published[header["kid"]]["alg"] == alg
    signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    signed = f"{head}.{body}".encode()
    if alg == "EdDSA":
        key.public_key.verify(signature, signed)
    else:
        key.public_key.verify(signature, signed, padding.PKCS1v15(), SHA256())
    assert server.services.access_tokens.verify(token)["sub"] == "svc"
