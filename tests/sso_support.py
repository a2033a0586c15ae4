"""Helpers shared by the login, authorize, logout and SSO flow tests (real HTTP, real DBs)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.core.identity import User

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_LOGIN_ACTION = re.compile(r'<form method="post" action="(/login[^"]*)"')
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def make_user(services: Services, username: str, password: str, **fields: Any) -> User:
    return services.identity.create_user(
        username=username, password_hash=services.password_hasher.hash(password), **fields
    )


def csrf_token(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "no CSRF token in the page"
    return html.unescape(found.group(1))


def hidden_fields(page: str) -> dict[str, str]:
    return {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}


def post_login(
    client: httpx.Client, page: httpx.Response, username: str, password: str
) -> httpx.Response:
    """Submits the login form found in `page` the way a browser would."""
    fields = hidden_fields(page.text)
    fields.update({"username": username, "password": password})
    action = _LOGIN_ACTION.search(page.text)
    return client.post(html.unescape(action.group(1)) if action else "/login", data=fields)


def login(
    client: httpx.Client, username: str, password: str, *, return_to: str | None = None
) -> httpx.Response:
    page = client.get("/login", params={"return_to": return_to} if return_to else None)
    assert page.status_code == 200, page.text
    return post_login(client, page, username, password)


def events(services: Services, event_type: str) -> list[dict[str, Any]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events)
            .where(audit_events.c.event_type == event_type)
            .order_by(audit_events.c.seq)
        ).all()
    out = []
    for row in rows:
        item = dict(row._mapping)
        item["details"] = json.loads(item["details"])
        out.append(item)
    return out


# ------------------------------------------------------------------ OAuth flows


def register_client(
    services: Services,
    client_id: str,
    *,
    port: int = 8001,
    first_party: bool = True,
    backchannel_logout_uri: str | None = None,
    scope: str = "openid profile email offline_access",
) -> tuple[Any, str]:
    services.keys.ensure_active(lambda _line: None)
    client, secret = services.clients.register(
        client_id,
        name=client_id.upper(),
        redirect_uris=[f"http://127.0.0.1:{port}/callback"],
        post_logout_redirect_uris=[f"http://127.0.0.1:{port}/logged-out"],
        backchannel_logout_uri=backchannel_logout_uri,
        first_party=first_party,
        scope=scope,
    )
    assert secret is not None
    return client, secret


def follow(browser: httpx.Client, url: str, *, limit: int = 10) -> httpx.Response:
    """GETs `url` and follows redirects while they stay on idhub (like a browser would, but
    stopping where it would leave for the relying party)."""
    base = str(browser.base_url).rstrip("/")
    response = browser.get(url)
    for _ in range(limit):
        location = response.headers.get("location")
        if response.status_code not in (301, 302, 303, 307) or location is None:
            return response
        if location.startswith("/"):
            location = base + location
        if not location.startswith(base + "/"):
            return response
        response = browser.get(location)
    raise AssertionError("too many redirects")


def sign_in_at(
    browser: httpx.Client, login_page: httpx.Response, username: str, password: str
) -> httpx.Response:
    """Fills in the login page and follows idhub's redirects back to /authorize."""
    assert login_page.status_code == 200 and 'name="password"' in login_page.text, (
        login_page.status_code,
        login_page.text[:300],
    )
    done = post_login(browser, login_page, username, password)
    assert done.status_code == 303, done.text[:500]
    return follow(browser, done.headers["location"])


def oauth_client(
    live_url: str,
    client_id: str,
    secret: str,
    *,
    port: int = 8001,
    scope: str = "openid profile email",
) -> Any:
    from authlib.integrations.httpx_client import OAuth2Client

    return OAuth2Client(
        client_id=client_id,
        client_secret=secret,
        scope=scope,
        redirect_uri=f"http://127.0.0.1:{port}/callback",
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )


def validate_id_token(
    issuer: str, token: str, *, client_id: str, nonce: str | None
) -> dict[str, Any]:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(httpx.get(f"{issuer}/jwks", timeout=5).json())
    decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256", "EdDSA"])
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
        **({"nonce": {"essential": True, "value": nonce}} if nonce else {}),
    )
    registry.validate(decoded.claims)
    return dict(decoded.claims)


def query_of(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


def cli_config_for(tmp_path: Path, db_url: str) -> Path:
    """An idhub.toml for the CLI on the same database (and secret key) as the test services."""
    from tests.conftest import TEST_SECRET_KEY

    var = tmp_path / "cli-var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    config = tmp_path / "cli.toml"
    config.write_text(f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n', encoding="utf-8")
    return config
