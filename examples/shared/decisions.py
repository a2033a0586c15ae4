"""Asking idhub's decision API about the person behind an access token, by the token's `sub`
(the subject idhub issued), never by a name the system typed: a username is not in the token.

TODO(sdk): `PdpClient.check` / `scopes` take the claims directly on branch `sdk`; until that
lands these go through `check_many`, whose requests already accept `sub`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from idhub.sdk import Decision, PdpClient


def question(
    claims: Mapping[str, Any],
    domain: str,
    type: str,
    action: str,
    *,
    owner: str | None = None,
    dept: str | None = None,
    resource_id: str | None = None,
) -> dict[str, Any]:
    resource = {
        k: v for k, v in (("owner", owner), ("dept", dept), ("id", resource_id)) if v is not None
    }
    asked: dict[str, Any] = {"sub": str(claims["sub"]), "domain": domain, "type": type}
    asked["action"] = action
    if resource:
        asked["resource"] = resource
    return asked


def check(pdp: PdpClient, claims: Mapping[str, Any], *args: str, **resource: Any) -> Decision:
    return pdp.check_many([question(claims, *args, **resource)])[0]


def check_many(pdp: PdpClient, questions: Sequence[dict[str, Any]]) -> list[Decision]:
    return pdp.check_many(questions) if questions else []
