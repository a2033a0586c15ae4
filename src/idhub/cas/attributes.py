"""What a CAS service learns about the person: the protocol 3.0 `cas:attributes`.

| attribute      | from                                   | consent scope |
|----------------|----------------------------------------|---------------|
| username       | the username (also `cas:user`)         | profile       |
| name           | display name                           | profile       |
| email          | email address                          | email         |
| employeeNumber | employee number                        | profile       |
| department     | department path (`/总部/财务部`)        | profile       |
| groups         | group names                            | groups        |
| roles          | roles in the service's policy domain   | (policy)      |

The identity facts come from `core/claims.py` (the same rules as OIDC claims), so a service
asking for `email` is covered by the same consent as an OIDC client granted the `email` scope.
Each service releases only the attributes it was registered with. The CAS authentication
attributes (`authenticationDate`, `isFromNewLogin`, `longTermAuthenticationRequestTokenUsed`)
are always released.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from idhub.core.cas import CasService
from idhub.core.claims import RoleSource, role_claims, user_claims
from idhub.core.identity import User

# CAS attribute -> (claim in core/claims.py, the scope consent covers it under)
_FROM_CLAIMS: dict[str, tuple[str, str]] = {
    "username": ("preferred_username", "profile"),
    "name": ("name", "profile"),
    "email": ("email", "email"),
    "employeeNumber": ("employee_id", "profile"),
    "department": ("department", "profile"),
    "groups": ("groups", "groups"),
}

Attributes = dict[str, str | list[str]]


def consent_scopes(attributes: Iterable[str]) -> tuple[str, ...]:
    """The scopes the person approves when a service asks for `attributes`."""
    scopes = {_FROM_CLAIMS[a][1] for a in attributes if a in _FROM_CLAIMS}
    return ("openid", *sorted(scopes))


def iso_instant(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AttributeRelease:
    def __init__(
        self,
        *,
        groups: Callable[[int], list[str]],
        roles: Callable[[], RoleSource | None],
        domains: Iterable[str],
    ) -> None:
        self._groups = groups
        self._roles = roles
        self._domains = tuple(domains)

    def groups(self, user_id: int) -> list[str]:
        return self._groups(user_id)

    def release(
        self,
        user: User,
        service: CasService,
        *,
        auth_time: float,
        from_new_login: bool,
        groups: Callable[[int], list[str]] | None = None,
    ) -> Attributes:
        """`groups`: where to read the person's groups instead (a batch's memo)."""
        wanted = service.attributes
        claims = user_claims(user, consent_scopes(wanted), groups=groups or self._groups)
        out: Attributes = {}
        for attribute in wanted:
            if attribute == "roles":
                roles = role_claims(
                    user, service.domain, roles=self._roles(), domains=self._domains
                )
                if "roles" in roles:
                    out["roles"] = [str(r) for r in roles["roles"]]
                continue
            claim = _FROM_CLAIMS[attribute][0]
            value = claims.get(claim)
            if isinstance(value, list):
                out[attribute] = [str(v) for v in value]
            elif value:
                out[attribute] = str(value)
        out["authenticationDate"] = iso_instant(auth_time)
        out["isFromNewLogin"] = "true" if from_new_login else "false"
        out["longTermAuthenticationRequestTokenUsed"] = "false"
        return out
