"""Helpers shared by the login, authorize, logout and SSO flow tests (real HTTP, real DBs)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import httpx
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.core.identity import User

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
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
    return client.post("/login", data=fields)


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
