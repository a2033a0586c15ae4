"""Malformed and forged JWTs at every bearer-checked endpoint and as `id_token_hint`.

Each forgery starts from a genuine token's claims, so the only thing wrong with it is the
thing under test: bad base64, `alg: none`, HS256 keyed with idhub's own RSA public key (the
algorithm-confusion attack), a `kid` idhub never published, a header past any sane size,
and a right signature on the wrong `typ` (an ID token, a plain JWT). The bearer endpoints
answer RFC 6750 `invalid_token` (401 with the challenge); a forged hint at `/logout` is no
hint at all: nobody is signed out without confirming and nobody is redirected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from authlib.common.security import generate_token
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from idhub.config.settings import LimitsSettings
from idhub.oidc import jws
from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer
from tests.oidc_support import prepare
from tests.sso_support import (
    events,
    follow,
    make_user,
    oauth_client,
    register_client,
    sign_in_at,
)

TOML = '[server]\nadmin_clients = ["auditor"]\n\n[policy]\nwatch = false\n'
SCOPE = "authz authz:admin audit:read"
PASSWORD = "alice-password-1"
LIMITS = LimitsSettings()
RP_LOGGED_OUT = "http://127.0.0.1:8001/logged-out"
# (method, path, JSON body) of every endpoint that takes an idhub access token.
BEARER_ENDPOINTS = (
    ("GET", "/userinfo", None),
    ("POST", "/userinfo", None),
    ("POST", "/api/v1/authz/check", {"user": "alice", "type": "t", "action": "a"}),
    ("POST", "/api/v1/authz/scopes", {"user": "alice", "type": "t", "action": "a"}),
    ("POST", "/api/v1/authz/explain", {"user": "alice", "type": "t", "action": "a"}),
    ("GET", "/api/v1/authz/policy", None),
    ("GET", "/api/v1/audit", None),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _encode(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())


def forgeries(genuine: str, live: LiveServer, *, typ: str) -> dict[str, str]:
    """Tokens that must all be refused, built from the claims of `genuine` (signed by idhub)."""
    header, claims, _, _ = jws.parse(genuine)
    kid, private_key = live.services.keys.signer("RS256")
    found = live.services.keys.verification_key(kid)
    assert found is not None
    public_pem = found[1].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = _encode({"alg": "HS256", "typ": typ, "kid": kid}, claims)
    mac = hmac.new(public_pem, confused.encode("ascii"), hashlib.sha256).digest()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    head, body, sig = genuine.split(".")
    return {
        "bad base64 header": "!!!" + head[3:] + "." + body + "." + sig,
        "bad base64 payload": head + ".*" + body[1:] + "." + sig,
        "header not JSON": _b64(b"{not json") + "." + body + "." + sig,
        "two parts": head + "." + body,
        "alg none": _encode({"alg": "none", "typ": typ, "kid": kid}, claims) + ".",
        "alg none, no kid": _encode({"alg": "none", "typ": typ}, claims) + ".",
        "HS256 with the RSA public key": confused + "." + _b64(mac),
        "unknown kid": jws.sign({"alg": "RS256", "typ": typ, "kid": "kid-never-published"},
                                claims, stranger),
        "a stranger's key under idhub's kid": jws.sign({"alg": "RS256", "typ": typ, "kid": kid},
                                                      claims, stranger),
        "huge header": _encode({**header, "x": "A" * 11_000}, claims) + "." + sig,
        "tampered payload": head + "." + _b64(json.dumps({**claims, "sub": "root"}).encode())
        + "." + sig,
        "wrong typ (JWT)": jws.sign({"alg": "RS256", "typ": "JWT", "kid": kid}, claims,
                                   private_key),
        "no typ": jws.sign({"alg": "RS256", "kid": kid}, claims, private_key),
    }  # fmt: skip


@dataclass
class Tokens:
    live: LiveServer
    access: str
    user_access: str
    id_token: str
    browser: httpx.Client


@pytest.fixture
def tokens(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str, known_secrets: KnownSecrets
) -> Any:
    live = make_live_server(sqlite_db_url, toml=TOML)
    prepare(live.services)
    make_user(live.services, "alice", PASSWORD)
    _, secret = live.services.clients.register(
        "auditor", grant_types=["client_credentials"], scope=SCOPE
    )
    known_secrets.add(secret)
    response = httpx.post(
        live.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": SCOPE},
        auth=("auditor", secret or ""),
    )
    assert response.status_code == 200, response.text
    access = str(response.json()["access_token"])
    _, oa_secret = register_client(live.services, "oa")
    oa = oauth_client(live.url, "oa", oa_secret, scope="openid profile")
    with httpx.Client(base_url=live.url, headers={"Accept-Language": "en"}) as browser:
        verifier = generate_token(48)
        url, _ = oa.create_authorization_url(
            live.url + "/authorize", code_verifier=verifier, nonce="n-1"
        )
        back = sign_in_at(browser, follow(browser, url), "alice", PASSWORD)
        token = oa.fetch_token(
            live.url + "/token",
            authorization_response=back.headers["location"],
            code_verifier=verifier,
        )
        known_secrets.add(access, token["access_token"], token["id_token"], oa_secret)
        yield Tokens(live, access, token["access_token"], token["id_token"], browser)


def _call(live: LiveServer, method: str, path: str, body: Any, token: str) -> httpx.Response:
    return httpx.request(
        method,
        live.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_genuine_tokens_are_accepted(tokens: Tokens) -> None:
    """The control: what the forgeries are made from works where they must fail."""
    live = tokens.live
    assert _call(live, "GET", "/api/v1/authz/policy", None, tokens.access).status_code == 200
    assert _call(live, "GET", "/api/v1/audit", None, tokens.access).status_code == 200
    assert _call(live, "GET", "/userinfo", None, tokens.user_access).status_code == 200


def test_forged_bearer_tokens_are_invalid_token_everywhere(tokens: Tokens) -> None:
    live = tokens.live
    forged = {
        **forgeries(tokens.access, live, typ="at+jwt"),
        **{f"user's, {k}": v for k, v in forgeries(tokens.user_access, live, typ="at+jwt").items()},
        "an ID token": tokens.id_token,
    }
    before = len(events(live.services, "authz.decision"))
    for name, token in forged.items():
        for method, path, body in BEARER_ENDPOINTS:
            response = _call(live, method, path, body, token)
            where = (name, method, path)
            assert response.status_code == 401, (*where, response.text[:200])
            assert response.json()["error"] == "invalid_token", where
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge, where
            assert response.headers["cache-control"] == "no-store", where
    # Nothing was decided, so nothing was recorded as decided.
    assert len(events(live.services, "authz.decision")) == before


def test_forged_id_token_hints_sign_nobody_out(tokens: Tokens) -> None:
    live, browser = tokens.live, tokens.browser
    alice = live.services.identity.get_user_by_username("alice")
    assert alice is not None
    forged = {
        **forgeries(tokens.id_token, live, typ="JWT"),
        "an access token": tokens.user_access,
    }
    forged.pop("wrong typ (JWT)")  # an ID token's own typ: that one is genuine
    forged.pop("no typ")
    for name, hint in forged.items():
        asked = browser.get("/logout", params={"id_token_hint": hint})
        # A hint that is not idhub's is no hint: the person is asked, not signed out (one
        # past the request-line limit is refused before it is read).
        expected = 414 if len(hint) > LIMITS.max_request_line else 200
        assert asked.status_code == expected, (name, asked.text[:200])
        assert "location" not in asked.headers, name
        redirect = browser.get(
            "/logout", params={"id_token_hint": hint, "post_logout_redirect_uri": RP_LOGGED_OUT}
        )
        # Without a believable hint (or client_id) the target cannot be trusted.
        assert redirect.status_code in (400, expected), name
        assert "location" not in redirect.headers, name
        assert len(live.services.sessions.active_for_user(alice.id)) == 1, name
    genuine = browser.get(
        "/logout",
        params={"id_token_hint": tokens.id_token, "post_logout_redirect_uri": RP_LOGGED_OUT},
    )
    assert genuine.status_code == 303 and genuine.headers["location"] == RP_LOGGED_OUT
    assert live.services.sessions.active_for_user(alice.id) == []
