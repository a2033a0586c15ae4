"""A live idhub with two SCIM sources (`hr` and `crm`), each with its own bearer token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from idhub.core.scim.service import token_digest

HR_TOKEN = "scim-hr-" + "h7Qd9kz2LmX4pW8rT1vB6nY3cF5gJ0sA"
CRM_TOKEN = "scim-crm-" + "Z3xC8vB1nM6qW4eR7tY2uI9oP5aS0dF"
TOML = f"""
[directory.scim.hr]
token_sha256 = "{token_digest(HR_TOKEN)}"

[directory.scim.crm]
token_sha256 = "{token_digest(CRM_TOKEN)}"
"""
MEDIA = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@dataclass
class Scim:
    url: str
    services: Any
    hr: httpx.Client
    crm: httpx.Client


def scim_clients(make_live_server: Callable[..., Any], db_url: str) -> Iterator[Scim]:
    server = make_live_server(db_url, toml=TOML)
    base = server.url + "/scim/v2"

    def client(token: str) -> httpx.Client:
        return httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {token}", "Content-Type": MEDIA},
            timeout=10,
        )

    with client(HR_TOKEN) as hr, client(CRM_TOKEN) as crm:
        yield Scim(base, server.services, hr, crm)


def user_body(name: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": [USER, ENTERPRISE],
        "userName": name,
        "name": {"givenName": name.title(), "familyName": "Test"},
        "emails": [{"value": f"{name}@example.cn", "type": "work", "primary": True}],
        ENTERPRISE: {"employeeNumber": f"E-{name}", "department": "Finance"},
    }
    body.update(extra)
    return body
