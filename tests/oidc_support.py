"""Helpers shared by the OIDC token-side tests (not a test module itself)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jwk, jwt

from idhub.bootstrap import Services
from idhub.core.audit import RequestContext
from idhub.core.identity import User
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData

if TYPE_CHECKING:
    from tests.audit_scan import KnownSecrets

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
RP = "http://127.0.0.1:9/cb"


def quiet(_: str) -> None:
    pass


def prepare(services: Services) -> None:
    services.keys.ensure_active(quiet)


def make_user(services: Services, username: str = "zhangsan", **kw: Any) -> User:
    return services.identity.create_user(
        username=username,
        display_name=kw.pop("display_name", "张三"),
        email=kw.pop("email", f"{username}@example.com"),
        phone=kw.pop("phone", "+86 10 5555 0100"),
        employee_id=kw.pop("employee_id", "E1001"),
        department_path=kw.pop("department_path", "/总部/财务部"),
        **kw,
    )


def web_client(services: Services, client_id: str = "oa", **kw: Any) -> tuple[Any, str | None]:
    kw.setdefault("redirect_uris", [RP])
    kw.setdefault("grant_types", ["authorization_code", "refresh_token", TOKEN_EXCHANGE])
    kw.setdefault("scope", "openid profile email phone groups offline_access")
    return services.clients.register(client_id, **kw)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue_code(
    services: Services,
    client_id: str,
    user: User,
    *,
    challenge: str | None = None,
    scope: str = "openid profile email",
    nonce: str | None = "n-0S6_WzA2Mj",
    resource: str | None = None,
    sid: str = "sid-1",
) -> str:
    """Runs the real authorization-endpoint path (validate, then authorize) and returns the code."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": RP,
        "scope": scope,
        "state": "st-1",
    }
    if nonce:
        params["nonce"] = nonce
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    if resource:
        params["resource"] = resource
    data = OAuthRequestData(
        "GET",
        services.settings.server.issuer + "/authorize",
        {},
        params,
        {k: [v] for k, v in params.items()},
    )
    req = services.oidc.validate_authorization(data)
    response = services.oidc.authorize(
        req, user=user, sid=sid, auth_time=services.clock.now(), amr=["pwd"], acr="1"
    )
    assert response.status == 302 and response.location
    query = parse_qs(urlsplit(response.location).query)
    assert query["state"] == ["st-1"]
    assert query["iss"] == [services.settings.server.issuer]
    return query["code"][0]


def oauth_client(
    url: str, client_id: str, secret: Any = None, method: Any = None, **kw: Any
) -> OAuth2Client:
    if method is None:
        method = "client_secret_basic" if secret else "none"
    client = OAuth2Client(client_id, secret, token_endpoint_auth_method=method, **kw)
    if isinstance(method, PrivateKeyJWT):
        client.register_client_auth_method(method)
    return client


def jwks(url: str) -> jwk.KeySet:
    return jwk.KeySet.import_key_set(httpx.get(url + "/jwks").json())


def decode(token: str, url: str) -> jwt.Token:
    """Validates a token the way a relying party does: against the published JWKS."""
    return jwt.decode(token, jwks(url), algorithms=["RS256", "ES256"])


def post(url: str, path: str, data: dict[str, str], **kw: Any) -> httpx.Response:
    return httpx.post(url + path, data=data, **kw)


def basic_header(client_id: str, secret: str) -> str:
    """An `Authorization: Basic` value as RFC 6749 2.3.1 spells it (both parts form-encoded)."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def raw_form_request(
    path: str, form: list[tuple[str, str]], ip: str, *, headers: dict[str, str] | None = None
) -> OAuthRequestData:
    """A form POST to `path` as the web layer hands it over, repeated fields kept (first value
    in `params`, all in `multi`), from client address `ip`, with any headers given."""
    params: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in form:
        params.setdefault(key, value)
        multi.setdefault(key, []).append(value)
    return OAuthRequestData(
        method="POST",
        uri="http://127.0.0.1:8000" + path,
        headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
        params=params,
        multi=multi,
        ctx=RequestContext(client_ip=ip, user_agent="test", request_id="rid"),
    )


def form_request(
    services: Services, path: str, form: dict[str, str], secret: str, client_id: str = "oa"
) -> OAuthRequestData:
    """A form POST to `path` as the web layer hands it over, with HTTP Basic client auth."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return OAuthRequestData(
        "POST",
        services.settings.server.issuer + path,
        {"content-type": "application/x-www-form-urlencoded", "authorization": f"Basic {basic}"},
        form,
        {k: [v] for k, v in form.items()},
        RequestContext("127.0.0.1", "pytest", "req-oidc"),
    )


def endpoint(
    services: Services, path: str, form: dict[str, str], secret: str, client_id: str = "oa"
) -> OAuthResponseData:
    """`/token` or `/revoke` called in-process, the client authenticating with HTTP Basic."""
    data = form_request(services, path, form, secret, client_id)
    if path == "/token":
        return services.oidc.token(data)
    return services.oidc.revoke(data)


def reply(response: OAuthResponseData) -> dict[str, Any]:
    assert isinstance(response.body, dict), response
    return response.body


@dataclass
class Oidc:
    """A confidential client `oa` and a user, driven through the token endpoint."""

    services: Services
    secret: str
    user: Any
    client_id: str = "oa"

    @classmethod
    def ready(cls, services: Services, known_secrets: KnownSecrets) -> Oidc:
        """On prepared `services`: a user and the client `oa`, whose secret the audit scan
        is told to look for (it must never appear in the trail)."""
        prepare(services)
        user = make_user(services)
        _, secret = web_client(services, "oa")
        assert secret is not None
        known_secrets.add(secret)
        return cls(services, str(secret), user)

    def code(self) -> str:
        return issue_code(
            self.services, self.client_id, self.user, scope="openid profile offline_access"
        )

    def redeem(self, code: str) -> OAuthResponseData:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": RP}
        return endpoint(self.services, "/token", form, self.secret, self.client_id)

    def tokens(self) -> dict[str, Any]:
        answer = self.redeem(self.code())
        assert answer.status == 200, answer
        return reply(answer)

    def refresh(self, token: str) -> OAuthResponseData:
        form = {"grant_type": "refresh_token", "refresh_token": token}
        return endpoint(self.services, "/token", form, self.secret, self.client_id)
