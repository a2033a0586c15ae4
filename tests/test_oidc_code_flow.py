"""Authorization code + PKCE, ID tokens, refresh rotation and reuse detection, token exchange,
each driven by authlib's OAuth client against a live server on both databases.

The code is obtained through the provider's real authorization path (`validate_authorization`
then `authorize`, what `/authorize` calls once the user has signed in)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.integrations.httpx_client import OAuthError

from idhub.core.audit import EventType
from tests.conftest import LiveServer
from tests.oidc_support import (
    ACCESS_TOKEN_TYPE,
    RP,
    TOKEN_EXCHANGE,
    decode,
    issue_code,
    make_user,
    oauth_client,
    pkce_pair,
    web_client,
)


def _count(live: LiveServer, kind: EventType) -> int:
    from sqlalchemy import func, select

    from idhub.adapters.db import audit_events

    with live.services.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(audit_events.c.event_type == kind.value)
            ).scalar_one()
        )


def test_code_pkce_id_token_and_userinfo(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    group = services.identity.ensure_group("finance-approvers")
    services.identity.add_group_member(group.id, user.id)
    _, secret = web_client(services, "oa", allowed_audiences=["reimburse"])
    verifier, challenge = pkce_pair()
    code = issue_code(
        services, "oa", user, challenge=challenge, scope="openid profile email phone groups"
    )
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    token = client.fetch_token(
        server.url + "/token", grant_type="authorization_code", code=code, code_verifier=verifier
    )
    id_token = decode(token["id_token"], server.url)
    assert id_token.header["alg"] == "RS256"
    claims = id_token.claims
    assert claims["iss"] == server.url and claims["aud"] == "oa" and claims["sub"] == user.sub
    assert claims["nonce"] == "n-0S6_WzA2Mj" and claims["sid"] == "sid-1"
    assert claims["amr"] == ["pwd"] and claims["acr"] == "1" and claims["auth_time"] > 0
    assert claims["preferred_username"] == "zhangsan" and claims["name"] == "张三"
    assert claims["email"] == "zhangsan@example.com" and claims["phone_number"]
    assert claims["employee_id"] == "E1001" and claims["department"] == "/总部/财务部"
    assert claims["groups"] == ["finance-approvers"]
    from idhub.oidc.tokens import half_hash

    assert claims["at_hash"] == half_hash(token["access_token"], "RS256")
    access = decode(token["access_token"], server.url)
    assert access.header["typ"] == "at+jwt" and access.claims["aud"] == "oa"
    assert access.claims["sub"] == user.sub and access.claims["client_id"] == "oa"
    assert token["refresh_token"]

    info = httpx.get(
        server.url + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert info.status_code == 200
    assert info.json()["sub"] == user.sub and info.json()["groups"] == ["finance-approvers"]
    denied = httpx.get(server.url + "/userinfo", headers={"Authorization": "Bearer nonsense"})
    assert denied.status_code == 401
    assert 'error="invalid_token"' in denied.headers["www-authenticate"]

    # The same code a second time: refused, and the refresh family it started is revoked.
    with pytest.raises(OAuthError) as exc:
        client.fetch_token(
            server.url + "/token",
            grant_type="authorization_code",
            code=code,
            code_verifier=verifier,
        )
    assert exc.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as exc:
        client.refresh_token(server.url + "/token", refresh_token=token["refresh_token"])
    assert exc.value.error == "invalid_grant"


def test_public_client_needs_pkce_and_the_right_verifier(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    services.clients.register("spa", public=True, redirect_uris=[RP], scope="openid profile")
    from idhub.oidc.messages import AuthorizationErrorRedirect, OAuthRequestData

    params = {"response_type": "code", "client_id": "spa", "redirect_uri": RP, "scope": "openid"}
    with pytest.raises(AuthorizationErrorRedirect) as redirect:
        services.oidc.validate_authorization(
            OAuthRequestData("GET", server.url + "/authorize", {}, params, {})
        )
    assert redirect.value.error == "invalid_request"
    location = redirect.value.response.location or ""
    query = parse_qs(urlsplit(location).query)
    assert location.startswith(RP) and query["error"] == ["invalid_request"]
    assert query["iss"] == [server.url]

    verifier, challenge = pkce_pair()
    code = issue_code(services, "spa", user, challenge=challenge, scope="openid profile")
    client = oauth_client(server.url, "spa", None, "none", redirect_uri=RP)
    other_verifier, _ = pkce_pair()
    with pytest.raises(OAuthError) as exc:
        client.fetch_token(
            server.url + "/token",
            grant_type="authorization_code",
            code=code,
            code_verifier=other_verifier,
        )
    assert exc.value.error == "invalid_grant"
    # Without a verifier at all.
    code = issue_code(services, "spa", user, challenge=challenge, scope="openid profile")
    response = httpx.post(
        server.url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": "spa",
            "redirect_uri": RP,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    code = issue_code(services, "spa", user, challenge=challenge, scope="openid profile")
    token = client.fetch_token(
        server.url + "/token", grant_type="authorization_code", code=code, code_verifier=verifier
    )
    assert decode(token["id_token"], server.url).claims["aud"] == "spa"


def test_expired_code_and_wrong_redirect(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa")
    from idhub.core.crypto import sha256_hex
    from idhub.core.token_storage import CodeRecord

    now = services.clock.now()
    services.token_store.save_code(
        CodeRecord(
            code_hash=sha256_hex("old-code"),
            client_id="oa",
            user_id=user.id,
            redirect_uri=RP,
            scope="openid",
            nonce=None,
            code_challenge=None,
            code_challenge_method=None,
            resource=None,
            sid=None,
            auth_time=now - 200,
            acr=None,
            amr=[],
            created_at=now - 200,
            expires_at=now - 100,
        )
    )
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    with pytest.raises(OAuthError) as exc:
        client.fetch_token(server.url + "/token", grant_type="authorization_code", code="old-code")
    assert exc.value.error == "invalid_grant"
    code = issue_code(services, "oa", user)
    other = oauth_client(server.url, "oa", secret, redirect_uri="http://127.0.0.1:9/other")
    with pytest.raises(OAuthError) as exc:
        other.fetch_token(server.url + "/token", grant_type="authorization_code", code=code)
    assert exc.value.error == "invalid_grant"


def test_refresh_rotation_and_reuse_revokes_the_family(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    first = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    second = client.refresh_token(server.url + "/token", refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert decode(second["access_token"], server.url).claims["sub"] == user.sub
    assert "id_token" not in second  # OIDC Core 12.2: optional on refresh; see docs/oidc.md
    assert decode(second["access_token"], server.url).claims["client_id"] == "oa"
    third = client.refresh_token(server.url + "/token", refresh_token=second["refresh_token"])
    # The first token comes back (stolen copy): refused, and the whole family dies with it.
    with pytest.raises(OAuthError) as exc:
        client.refresh_token(server.url + "/token", refresh_token=first["refresh_token"])
    assert exc.value.error == "invalid_grant"
    with pytest.raises(OAuthError) as exc:
        client.refresh_token(server.url + "/token", refresh_token=third["refresh_token"])
    assert exc.value.error == "invalid_grant"
    assert _count(server, EventType.REFRESH_REUSE_DETECTED) == 1
    assert _count(server, EventType.TOKEN_REFRESHED) == 2
    # A refresh token of one client is useless to another.
    _, other_secret = web_client(services, "reimburse")
    fresh = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    thief = oauth_client(server.url, "reimburse", other_secret)
    with pytest.raises(OAuthError) as exc:
        thief.refresh_token(server.url + "/token", refresh_token=fresh["refresh_token"])
    assert exc.value.error == "invalid_grant"


def test_session_logout_revokes_refresh_families(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    token = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user, sid="sid-9"),
    )
    assert services.tokens_revoker.revoke_families_for_session("sid-9") == 1
    with pytest.raises(OAuthError):
        client.refresh_token(server.url + "/token", refresh_token=token["refresh_token"])


def test_token_exchange_oa_to_reimburse(server: LiveServer) -> None:
    services = server.services
    user = make_user(services)
    _, oa_secret = web_client(services, "oa", allowed_audiences=["reimburse"])
    _, rb_secret = web_client(services, "reimburse")
    oa = oauth_client(server.url, "oa", oa_secret, redirect_uri=RP)
    user_token = oa.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user, scope="openid profile"),
    )["access_token"]
    exchanged = oa.fetch_token(
        server.url + "/token",
        grant_type=TOKEN_EXCHANGE,
        subject_token=user_token,
        subject_token_type=ACCESS_TOKEN_TYPE,
        resource="reimburse",
    )
    assert exchanged["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert "refresh_token" not in exchanged
    claims = decode(exchanged["access_token"], server.url).claims
    assert claims["aud"] == "reimburse" and claims["sub"] == user.sub
    assert claims["act"] == {"sub": "oa"} and claims["client_id"] == "oa"
    # Contract 4: a token for a policy domain carries that domain's roles and the policy version.
    assert claims["roles"] == services.authz.roles_for(user, "reimburse")
    assert claims["policy_version"] == services.authz.version
    subject = decode(user_token, server.url).claims
    assert claims["exp"] <= subject["exp"]
    assert services.access_tokens.verify(exchanged["access_token"], audience="reimburse")
    assert _count(server, EventType.TOKEN_EXCHANGED) == 1

    # OA is not registered for archive: no token for it.
    bad_target = httpx.post(
        server.url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": user_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": "archive",
        },
        auth=("oa", oa_secret or ""),
    )
    assert bad_target.status_code == 400 and bad_target.json()["error"] == "invalid_target"
    # reimburse cannot exchange a token that was issued for OA.
    foreign = httpx.post(
        server.url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": user_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": "reimburse",
        },
        auth=("reimburse", rb_secret or ""),
    )
    assert foreign.status_code == 400 and foreign.json()["error"] == "invalid_grant"
    # A tampered subject token.
    head, body, sig = user_token.split(".")
    tampered = f"{head}.{body[:-4]}AAAA.{sig}"
    response = httpx.post(
        server.url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": tampered,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": "reimburse",
        },
        auth=("oa", oa_secret or ""),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    missing = httpx.post(
        server.url + "/token",
        data={"grant_type": TOKEN_EXCHANGE, "resource": "reimburse"},
        auth=("oa", oa_secret or ""),
    )
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_per_client_id_token_alg_and_disabled_user(server: LiveServer) -> None:
    import time

    services = server.services
    user = make_user(services)
    _, secret = web_client(services, "oa", id_token_alg="ES256")
    client = oauth_client(server.url, "oa", secret, redirect_uri=RP)
    token = client.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", user),
    )
    id_token = decode(token["id_token"], server.url)
    assert id_token.header["alg"] == "ES256"
    from idhub.oidc.tokens import half_hash

    assert id_token.claims["at_hash"] == half_hash(token["access_token"], "ES256")
    services.identity.set_disabled(user.id, True, reason="left")
    time.sleep(2.1)  # the issuer remembers users for 2 s (docs/oidc.md, Decisions)
    with pytest.raises(OAuthError) as exc:
        client.refresh_token(server.url + "/token", refresh_token=token["refresh_token"])
    assert exc.value.error == "invalid_grant"
    # A disabled user's code is refused as well.
    services.identity.set_disabled(user.id, False)
    code = issue_code(services, "oa", user)
    services.identity.set_disabled(user.id, True, reason="left")
    time.sleep(2.1)
    with pytest.raises(OAuthError) as exc:
        client.fetch_token(server.url + "/token", grant_type="authorization_code", code=code)
    assert exc.value.error == "invalid_grant"
