"""What an SP learns about a person: the NameID and the released attributes.

NameID formats (per SP, `--name-id`):
- `persistent`: an opaque value, stable for one person at one SP and different at every other
  (HMAC of the SP's entity id and the person's `sub` under a key derived from the server secret),
  so SPs cannot correlate people;
- `email`: the person's e-mail address;
- `unspecified`: the username.

Attributes carry a URI `Name` (NameFormat `uri`) and a `FriendlyName`; the standard ones use
their LDAP OIDs, idhub's own use `urn:idhub:attribute:*`. `roles` are the person's roles in the
SP's policy domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from idhub.core.claims import RoleSource, role_claims
from idhub.core.identity import User

if TYPE_CHECKING:
    from idhub.saml.registry import ServiceProvider

NAME_FORMAT_URI = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"

# friendly name -> URI name
ATTRIBUTE_URIS: dict[str, str] = {
    "uid": "urn:oid:0.9.2342.19200300.100.1.1",
    "mail": "urn:oid:0.9.2342.19200300.100.1.3",
    "displayName": "urn:oid:2.16.840.1.113730.3.1.241",
    "employeeNumber": "urn:oid:2.16.840.1.113730.3.1.3",
    "department": "urn:idhub:attribute:department",
    "groups": "urn:idhub:attribute:groups",
    "roles": "urn:idhub:attribute:roles",
}


@dataclass(frozen=True)
class NameIdValue:
    format: str
    value: str


def name_id_for(sp: ServiceProvider, user: User, *, opaque: Callable[[str], str]) -> NameIdValue:
    """The NameID `sp` gets for `user`; an `email` SP gets the username (format unspecified)
    for a person without an e-mail address rather than nothing."""
    if sp.name_id_format == "email" and user.email:
        return NameIdValue(sp.name_id_format_uri, user.email)
    if sp.name_id_format in ("email", "unspecified"):
        return NameIdValue("urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified", user.username)
    return NameIdValue(sp.name_id_format_uri, opaque(f"{sp.entity_id}\0{user.sub}")[:43])


def session_index_for(sid: str, *, opaque: Callable[[str], str]) -> str:
    """The SessionIndex SPs see for an SSO session (not its sid, which ID tokens carry)."""
    return opaque(f"session\0{sid}")[:32]


def released_names(sp: ServiceProvider) -> tuple[str, ...]:
    return tuple(a for a in ATTRIBUTE_URIS if not sp.attributes or a in sp.attributes)


def plan_attributes(
    sp: ServiceProvider,
    user: User,
    *,
    groups: Callable[[int], list[str]],
    roles: RoleSource | None,
    domains: Iterable[str],
) -> dict[str, list[str]]:
    """friendly name -> values for the attributes `sp` is released (empty ones left out)."""
    wanted = released_names(sp)
    values: dict[str, list[str]] = {
        "uid": [user.username],
        "mail": [user.email] if user.email else [],
        "displayName": [user.display_name] if user.display_name else [],
        "employeeNumber": [user.employee_id] if user.employee_id else [],
        "department": [user.department_path] if user.department_path else [],
    }
    if "groups" in wanted:
        values["groups"] = list(groups(user.id))
    if "roles" in wanted:
        claims = role_claims(user, sp.domain, roles=roles, domains=domains)
        values["roles"] = list(claims.get("roles", []))
    return {name: values[name] for name in wanted if values.get(name)}
