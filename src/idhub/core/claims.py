"""Which facts about a person go into ID tokens, userinfo and access tokens, by scope.

| scope   | claims                                                        |
|---------|---------------------------------------------------------------|
| openid  | sub                                                           |
| profile | preferred_username, name, employee_id, department             |
| email   | email                                                         |
| phone   | phone_number                                                  |
| groups  | groups                                                        |

`roles` and `policy_version` come from the authorization service and are added only for an
audience that is a policy domain (contract 4), through the `RoleSource` hook below.

A user's access token for a policy domain's system also carries `preferred_username` and
`department` whatever the scopes (`record_claims`): that system files records under an owner
and a department which idhub's data scopes compare, so it needs the canonical spelling of
both without a call back. Every other access token names the user by `sub` alone, which is
what the decision API takes (docs/sdk.md, "Which claims an access token carries").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from idhub.core.identity import User

STANDARD_SCOPES = ("openid", "profile", "email", "phone", "groups", "offline_access")

SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": ("preferred_username", "name", "employee_id", "department"),
    "email": ("email",),
    "phone": ("phone_number",),
    "groups": ("groups",),
}

CLAIMS_SUPPORTED = tuple(
    dict.fromkeys(
        [c for claims in SCOPE_CLAIMS.values() for c in claims]
        + ["sid", "auth_time", "acr", "amr", "nonce", "roles", "policy_version", "act"]
    )
)


class RoleSource(Protocol):
    """What the authorization service offers the token side (contract 4)."""

    def roles_for(self, user: User, domain: str) -> list[str]: ...

    @property
    def version(self) -> str: ...


def user_claims(
    user: User, scopes: Iterable[str], *, groups: Callable[[int], list[str]] | None = None
) -> dict[str, Any]:
    """The identity claims the granted scopes allow, omitting those the user has no value for."""
    granted = set(scopes)
    claims: dict[str, Any] = {"sub": user.sub}
    if "profile" in granted:
        claims["preferred_username"] = user.username
        if user.display_name:
            claims["name"] = user.display_name
        if user.employee_id:
            claims["employee_id"] = user.employee_id
        if user.department_path:
            claims["department"] = user.department_path
    if "email" in granted and user.email:
        claims["email"] = user.email
    if "phone" in granted and user.phone:
        claims["phone_number"] = user.phone
    if "groups" in granted and groups is not None:
        claims["groups"] = groups(user.id)
    return claims


def role_claims(
    user: User, audience: str, *, roles: RoleSource | None, domains: Iterable[str]
) -> dict[str, Any]:
    """`roles` + `policy_version` when the audience is a policy domain and roles are known."""
    if roles is None or audience not in set(domains):
        return {}
    return {"roles": list(roles.roles_for(user, audience)), "policy_version": roles.version}


def record_claims(user: User, audience: str, *, domains: Iterable[str]) -> dict[str, Any]:
    """`preferred_username` and `department` (when set) for a policy domain's audience."""
    if audience not in set(domains):
        return {}
    claims: dict[str, Any] = {"preferred_username": user.username}
    if user.department_path:
        claims["department"] = user.department_path
    return claims
