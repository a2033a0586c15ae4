"""How LDAP / Active Directory entries become idhub users, departments and groups.

Pure functions over raw attribute values (bytes, as the wire carries them), so the same code
maps a live OpenLDAP entry, a live AD entry and a recorded AD entry in a unit test.

Two presets carry the conventions of each server:

- `openldap`: `uid`, `entryUUID` as the stable id, `pwdAccountLockedTime` (ppolicy) present
  means disabled, `modifyTimestamp` as the change mark, `manager` on an OU names its head.
- `active_directory`: `sAMAccountName`, binary `objectGUID` (rendered as the usual
  little-endian GUID string), the ACCOUNTDISABLE bit (0x2) of `userAccountControl`,
  `uSNChanged` as the change mark (a per-server counter, so it is compared as an integer),
  `managedBy` on an OU.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

from idhub.core.directory.change_marks import ChangeMark
from idhub.core.directory.dn import (
    MappingProblem,
    department_from_dn,
    department_from_value,
    dn_key,
    normalise_dn,
)
from idhub.core.identity import refuse_nul
from idhub.errors import InvalidInput

RawAttributes = Mapping[str, Sequence[bytes]]  # lower-cased attribute name -> raw values

# userAccountControl flag ACCOUNTDISABLE ([MS-ADTS] 2.2.16).
AD_ACCOUNTDISABLE = 0x0002


@dataclass(frozen=True)
class AttributeMap:
    """Which directory attribute feeds which idhub field. Empty string: not mapped."""

    username: str = "uid"
    display_name: str = "displayName"
    email: str = "mail"
    phone: str = "telephoneNumber"
    employee_id: str = "employeeNumber"
    external_id: str = "entryUUID"
    # Disabled when the attribute is present (no `disabled_values`), when it holds one of
    # `disabled_values`, or (AD) when the ACCOUNTDISABLE bit is set in `userAccountControl`.
    disabled: str = "pwdAccountLockedTime"
    disabled_values: tuple[str, ...] = ()
    modified: str = "modifyTimestamp"
    # Used when departments come from an attribute ("财务部/费用核算组" or "/总部/财务部").
    department: str = "departmentNumber"
    # On the OU entry: the DN of the department's head.
    manager: str = "manager"
    group_name: str = "cn"
    member: str = "member"
    member_of: str = "memberOf"

    def user_attributes(self) -> list[str]:
        """The attributes a user search asks for."""
        wanted = [
            self.username,
            self.display_name,
            "cn",
            self.email,
            self.phone,
            self.employee_id,
            self.external_id,
            self.disabled,
            self.modified,
            self.department,
            self.member_of,
        ]
        return sorted({a for a in wanted if a})

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Preset:
    attributes: AttributeMap
    user_filter: str
    group_filter: str
    department_filter: str
    change_mark: ChangeMark


PRESETS: dict[str, Preset] = {
    "openldap": Preset(
        attributes=AttributeMap(),
        user_filter="(objectClass=inetOrgPerson)",
        group_filter="(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
        department_filter="(objectClass=organizationalUnit)",
        change_mark="timestamp",
    ),
    "active_directory": Preset(
        attributes=AttributeMap(
            username="sAMAccountName",
            display_name="displayName",
            email="mail",
            phone="telephoneNumber",
            employee_id="employeeID",
            external_id="objectGUID",
            disabled="userAccountControl",
            modified="uSNChanged",
            department="department",
            manager="managedBy",
        ),
        user_filter="(&(objectCategory=person)(objectClass=user))",
        group_filter="(objectClass=group)",
        department_filter="(objectClass=organizationalUnit)",
        change_mark="usn",
    ),
}


def attribute_map(preset: str, overrides: Mapping[str, str | tuple[str, ...]]) -> AttributeMap:
    return replace(PRESETS[preset].attributes, **overrides)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SourceUser:
    """One user as the directory describes it, already in idhub's terms."""

    external_id: str
    dn: str
    username: str
    display_name: str
    email: str | None
    phone: str | None
    employee_id: str | None
    department: str | None  # a department path, "/总部/财务部"
    disabled: bool
    modified: str | None
    member_of: tuple[str, ...] = ()
    # Values the source owns beyond the fields above, kept in the user's `attributes` under
    # these keys (DingTalk's unionid, which sign-in with DingTalk matches on, and title).
    # Keys a source does not name are left as they are.
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SourceGroup:
    external_id: str
    dn: str
    name: str
    members: tuple[str, ...]  # member DNs (users or groups), as `dn_key`s
    member_of: tuple[str, ...] = ()
    modified: str | None = None


@dataclass(frozen=True, slots=True)
class SourceDepartment:
    external_id: str
    dn: str
    path: str
    manager_dn: str | None
    modified: str | None = None
    order: int | None = None  # among siblings, for sources that give one (DingTalk, WeCom)


# ------------------------------------------------------------------ values


def text(values: Sequence[bytes] | None) -> str | None:
    if not values:
        return None
    value = values[0]
    out = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    out = out.strip()
    return out or None


def texts(values: Sequence[bytes] | None) -> tuple[str, ...]:
    if not values:
        return ()
    return tuple(
        v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in values
    )


def stable_id(attribute: str, values: Sequence[bytes] | None) -> str | None:
    """entryUUID is text; AD's objectGUID is 16 raw bytes in little-endian GUID layout."""
    if not values:
        return None
    raw = values[0]
    if attribute.lower() == "objectguid":
        if isinstance(raw, bytes) and len(raw) == 16:
            return str(uuid.UUID(bytes_le=raw))
        # Some tools hand the GUID over already formatted as "{...}".
        candidate = raw.decode("ascii", errors="replace") if isinstance(raw, bytes) else str(raw)
        try:
            return str(uuid.UUID(candidate.strip("{}")))
        except ValueError:
            raise MappingProblem(f"objectGUID is not a GUID: {candidate[:40]!r}") from None
    return text(values)


def is_disabled(attributes: AttributeMap, raw: RawAttributes) -> bool:
    name = attributes.disabled
    if not name:
        return False
    values = raw.get(name.lower())
    if name.lower() == "useraccountcontrol":
        flag = text(values)
        if flag is None:
            return False
        try:
            return bool(int(flag) & AD_ACCOUNTDISABLE)
        except ValueError:
            raise MappingProblem(f"userAccountControl is not a number: {flag[:20]!r}") from None
    if not values:
        return False
    if not attributes.disabled_values:
        return True
    wanted = {v.lower() for v in attributes.disabled_values}
    return any(v.lower() in wanted for v in texts(values))


# ------------------------------------------------------------------ entries


def map_user(
    dn: str,
    raw: RawAttributes,
    *,
    attributes: AttributeMap,
    department_from: Literal["dn", "attribute"],
    department_base: str,
) -> SourceUser:
    """Raises `MappingProblem` for entries that cannot be users."""
    external_id = stable_id(attributes.external_id, raw.get(attributes.external_id.lower()))
    if not external_id:
        raise MappingProblem(f"{dn}: no {attributes.external_id}")
    username = text(raw.get(attributes.username.lower()))
    if not username:
        raise MappingProblem(f"{dn}: no {attributes.username}")
    display = text(raw.get(attributes.display_name.lower())) if attributes.display_name else None
    display = display or text(raw.get("cn")) or username
    if department_from == "attribute":
        department = department_from_value(text(raw.get(attributes.department.lower())))
    else:
        department = department_from_dn(dn, department_base)
    email = _optional(attributes.email, raw)
    phone = _optional(attributes.phone, raw)
    employee_id = _optional(attributes.employee_id, raw)
    try:  # PostgreSQL stores no NUL (SQLite would): skipped with its reason on both
        refuse_nul(
            {"the stable id": external_id, "the username": username, "the display name": display,
             "the email": email, "the phone": phone, "the employee id": employee_id,
             "the department": department}
        )  # fmt: skip
    except InvalidInput as exc:
        raise MappingProblem(f"{dn}: {exc}") from None
    return SourceUser(
        external_id=external_id,
        dn=dn,
        username=username,
        display_name=display,
        email=email,
        phone=phone,
        employee_id=employee_id,
        department=department,
        disabled=is_disabled(attributes, raw),
        modified=text(raw.get(attributes.modified.lower())) if attributes.modified else None,
        member_of=texts(raw.get(attributes.member_of.lower())) if attributes.member_of else (),
    )


def _optional(name: str, raw: RawAttributes) -> str | None:
    return text(raw.get(name.lower())) if name else None


def map_group(dn: str, raw: RawAttributes, *, attributes: AttributeMap) -> SourceGroup:
    external_id = stable_id(attributes.external_id, raw.get(attributes.external_id.lower()))
    name = text(raw.get(attributes.group_name.lower()))
    if not external_id or not name:
        raise MappingProblem(
            f"{dn}: a group needs {attributes.external_id} and {attributes.group_name}"
        )
    # Stored as interned comparison keys: 5,000 groups repeat the same 100,000 user DNs, and
    # one shared string per DN is what keeps a large sync's memory in bounds.
    members = tuple(
        dn_key(m)
        for m in texts(raw.get(attributes.member.lower())) + texts(raw.get("uniquemember"))
    )
    return SourceGroup(
        external_id=external_id,
        dn=dn,
        name=name,
        members=members,
        member_of=texts(raw.get(attributes.member_of.lower())) if attributes.member_of else (),
        modified=text(raw.get(attributes.modified.lower())) if attributes.modified else None,
    )


def map_department(
    dn: str, raw: RawAttributes, *, attributes: AttributeMap, base: str
) -> SourceDepartment | None:
    path = department_from_dn(dn, base, include_self=True)
    if path is None:
        return None
    external_id = stable_id(attributes.external_id, raw.get(attributes.external_id.lower()))
    return SourceDepartment(
        external_id=external_id or normalise_dn(dn),
        dn=dn,
        path=path,
        manager_dn=text(raw.get(attributes.manager.lower())) if attributes.manager else None,
        modified=text(raw.get(attributes.modified.lower())) if attributes.modified else None,
    )
