"""Discovery, JWKS and key rotation (old tokens stay valid until they expire)."""

from __future__ import annotations

import httpx

from tests.conftest import LiveServer
from tests.oidc_support import RP, decode, issue_code, make_user, oauth_client, web_client


def test_discovery_document_names_everything_an_rp_needs(server: LiveServer) -> None:
    doc = httpx.get(server.url + "/.well-known/openid-configuration").json()
    assert doc["issuer"] == server.url
    for key in ("authorization", "token", "userinfo", "introspection", "revocation", "end_session"):
        assert doc[f"{key}_endpoint"].startswith(server.url + "/")
    assert doc["jwks_uri"] == server.url + "/jwks"
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["backchannel_logout_supported"] is True
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in doc["grant_types_supported"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert doc["response_types_supported"] == ["code"]
    # RFC 8414 location serves the same metadata.
    assert httpx.get(server.url + "/.well-known/oauth-authorization-server").json() == doc


def test_jwks_publishes_public_keys_only(server: LiveServer) -> None:
    response = httpx.get(server.url + "/jwks")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert sorted(k["alg"] for k in keys) == ["ES256", "EdDSA", "RS256"]
    for key in keys:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key), "private material published"
        assert key["use"] == "sig" and key["kid"]


def test_rotation_keeps_old_tokens_valid_until_they_expire(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    before = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    old_kids = {k["kid"] for k in httpx.get(server.url + "/jwks").json()["keys"]}
    rotated = services.keys.rotate()
    assert {alg for alg, _, _ in rotated} == {"RS256", "ES256", "EdDSA"}
    assert all(retired for _, _, retired in rotated)
    published = {k["kid"] for k in httpx.get(server.url + "/jwks").json()["keys"]}
    assert old_kids < published and len(published) == 6
    # Tokens signed before the rotation still validate, offline and by idhub.
    assert decode(before["id_token"], server.url).claims["sub"] == user.sub
    assert services.access_tokens.verify(before["access_token"])["sub"] == user.sub
    # New tokens use the new keys.
    after = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    new_kids = {kid for _, kid, _ in rotated}
    assert decode(after["access_token"], server.url).header["kid"] in new_kids
    assert decode(after["id_token"], server.url).header["kid"] in new_kids
    # Once the retired keys' tokens have all expired, the keys leave the JWKS.
    listed = {k.kid: k for k in services.keys.list()}
    assert {listed[kid].status for kid in old_kids} == {"retired"}
    expiry = max(listed[kid].expires_at or 0 for kid in old_kids)
    assert expiry >= services.clock.now() + services.settings.tokens.access_token_ttl
