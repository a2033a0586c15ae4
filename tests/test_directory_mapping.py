"""Mapping and planning without a server: recorded Active Directory entries, DN parsing,
the diff, the safety brake and nested-group resolution."""

from __future__ import annotations

import calendar
import time

import pytest

from idhub.core.directory.change_marks import later_mark, settled_mark
from idhub.core.directory.dn import (
    MappingProblem,
    department_from_dn,
    department_from_value,
    normalise_dn,
    parse_dn,
)
from idhub.core.directory.mapping import (
    PRESETS,
    SourceGroup,
    SourceUser,
    map_department,
    map_group,
    map_user,
)
from idhub.core.directory.plan import (
    DISABLED_IN_SOURCE,
    GONE_FROM_SOURCE,
    StoredUser,
    SyncPlan,
    check_brake,
    check_username_conflicts,
    plan_gone,
    plan_user,
    resolve_memberships,
)

AD = PRESETS["active_directory"].attributes
OPENLDAP = PRESETS["openldap"].attributes
AD_BASE = "DC=corp,DC=example,DC=com"

# objectGUID 01234567-89ab-cdef-0123-456789abcdef as AD sends it: the first three fields
# little-endian ([MS-DTYP] 2.3.4.2), the last eight bytes as they are.
GUID_BYTES = bytes.fromhex("67452301ab89efcd0123456789abcdef")
GUID_TEXT = "01234567-89ab-cdef-0123-456789abcdef"

# A user entry as an AD domain controller returned it (raw values, attribute names lowered).
RECORDED_AD_USER = {
    "objectguid": [GUID_BYTES],
    "samaccountname": [b"zhang.san"],
    "displayname": ["张三".encode()],
    "cn": [b"Zhang, San"],
    "mail": [b"zhang.san@corp.example.com"],
    "telephonenumber": [b"+86 10 5555 0101"],
    "employeeid": [b"E1001"],
    "useraccountcontrol": [b"512"],  # NORMAL_ACCOUNT
    "usnchanged": [b"204817"],
    "memberof": [f"CN=财务审批,OU=Groups,{AD_BASE}".encode()],
}
RECORDED_AD_DN = f"CN=Zhang\\, San,OU=费用核算组,OU=财务部,OU=总部,{AD_BASE}"


def test_active_directory_user_maps_guid_flags_and_ou_path() -> None:
    user = map_user(
        RECORDED_AD_DN,
        RECORDED_AD_USER,
        attributes=AD,
        department_from="dn",
        department_base=AD_BASE,
    )
    assert user.external_id == GUID_TEXT
    assert user.username == "zhang.san"
    assert user.display_name == "张三"
    assert user.employee_id == "E1001"
    assert user.department == "/总部/财务部/费用核算组"
    assert user.disabled is False
    assert user.modified == "204817"
    assert user.member_of == (f"CN=财务审批,OU=Groups,{AD_BASE}",)


@pytest.mark.parametrize(
    ("flags", "disabled"),
    [(b"512", False), (b"514", True), (b"66050", True), (b"66048", False), (b"546", True)],
)
def test_active_directory_accountdisable_bit(flags: bytes, disabled: bool) -> None:
    raw = {**RECORDED_AD_USER, "useraccountcontrol": [flags]}
    user = map_user(
        RECORDED_AD_DN, raw, attributes=AD, department_from="dn", department_base=AD_BASE
    )
    assert user.disabled is disabled


def test_active_directory_bad_values_are_reported_not_guessed() -> None:
    with pytest.raises(MappingProblem, match="userAccountControl"):
        map_user(
            RECORDED_AD_DN,
            {**RECORDED_AD_USER, "useraccountcontrol": [b"lots"]},
            attributes=AD,
            department_from="dn",
            department_base=AD_BASE,
        )
    with pytest.raises(MappingProblem, match="objectGUID"):
        map_user(
            RECORDED_AD_DN,
            {**RECORDED_AD_USER, "objectguid": [b"short"]},
            attributes=AD,
            department_from="dn",
            department_base=AD_BASE,
        )
    with pytest.raises(MappingProblem, match="sAMAccountName"):
        map_user(
            RECORDED_AD_DN,
            {**RECORDED_AD_USER, "samaccountname": []},
            attributes=AD,
            department_from="dn",
            department_base=AD_BASE,
        )


def test_active_directory_group_and_ou() -> None:
    group = map_group(
        f"CN=财务审批,OU=Groups,{AD_BASE}",
        {
            "objectguid": [bytes(range(16))],
            "cn": ["财务审批".encode()],
            "member": [RECORDED_AD_DN.encode()],
            "usnchanged": [b"99"],
        },
        attributes=AD,
    )
    assert group.external_id == "03020100-0504-0706-0809-0a0b0c0d0e0f"
    assert group.members == (normalise_dn(RECORDED_AD_DN),)
    assert normalise_dn(RECORDED_AD_DN).startswith("cn=zhang\\, san,ou=费用核算组,")
    ou = map_department(
        f"OU=财务部,OU=总部,{AD_BASE}",
        {"objectguid": [GUID_BYTES], "managedby": [RECORDED_AD_DN.encode()]},
        attributes=AD,
        base=AD_BASE,
    )
    assert ou is not None and ou.path == "/总部/财务部" and ou.manager_dn == RECORDED_AD_DN


def test_openldap_disabled_mark_and_values() -> None:
    base = "ou=people,dc=example,dc=com"
    raw = {
        "entryuuid": [b"8c5b3f4e-1f2a-4b1c-9d7e-0a1b2c3d4e5f"],
        "uid": [b"li.si"],
        "cn": ["李四".encode()],
    }
    dn = f"uid=li.si,ou=总部,{base}"
    kwargs = {"attributes": OPENLDAP, "department_from": "dn", "department_base": base}
    assert map_user(dn, raw, **kwargs).disabled is False  # type: ignore[arg-type]
    locked = {**raw, "pwdaccountlockedtime": [b"000001010000Z"]}
    assert map_user(dn, locked, **kwargs).disabled is True  # type: ignore[arg-type]
    assert map_user(dn, raw, **kwargs).display_name == "李四"  # type: ignore[arg-type]
    from dataclasses import replace

    by_value = replace(OPENLDAP, disabled="employeeType", disabled_values=("离职", "disabled"))
    gone = {**raw, "employeetype": ["离职".encode()]}
    staff = {**raw, "employeetype": ["正式".encode()]}
    assert map_user(
        dn, gone, attributes=by_value, department_from="dn", department_base=base
    ).disabled
    assert not map_user(
        dn, staff, attributes=by_value, department_from="dn", department_base=base
    ).disabled


def test_dn_parsing_handles_escapes_and_utf8_hex() -> None:
    assert parse_dn("CN=Zhang\\, San,OU=A\\+B,DC=x") == [
        ("cn", "Zhang, San"),
        ("ou", "A+B"),
        ("dc", "x"),
    ]
    # "财" written as RFC 4514 hex pairs of its UTF-8 bytes.
    assert parse_dn("ou=\\E8\\B4\\A2,dc=x")[0] == ("ou", "财")
    assert normalise_dn("UID=Bob, OU=People ,DC=Example") == "uid=bob,ou=people,dc=example"
    assert normalise_dn("uid=a\\,b,dc=x") == normalise_dn("UID=A\\2Cb,DC=X")
    # An escaped comma can never make one entry's key equal another's.
    assert normalise_dn("cn=a\\,ou=b,dc=x") != normalise_dn("cn=a,ou=b,dc=x")
    assert department_from_dn("uid=a,ou=people,dc=x", "ou=people,dc=x") is None
    assert department_from_dn("uid=a,ou=b,dc=other", "ou=people,dc=x") is None
    assert department_from_value("总部/财务部/") == "/总部/财务部"
    assert department_from_value("") is None


def test_change_marks() -> None:
    assert later_mark("9", "10", "usn") == "10"
    assert later_mark("20260101000000Z", "20251231235959Z", "timestamp") == "20260101000000Z"
    moment = calendar.timegm(time.strptime("20260101000000", "%Y%m%d%H%M%S"))
    # A second still in progress is read again; one safely past is stepped over.
    assert settled_mark("20260101000000Z", "timestamp", now=moment + 0.5, skew=0) == (
        "20260101000000Z"
    )
    assert settled_mark("20260101000000Z", "timestamp", now=moment + 5, skew=30) == (
        "20260101000000Z"
    )
    assert settled_mark("20260101000000Z", "timestamp", now=moment + 60, skew=30) == (
        "20260101000001Z"
    )
    assert settled_mark("204817", "usn", now=moment, skew=0) == "204817"


# ------------------------------------------------------------------ planning


def _entry(**overrides: object) -> SourceUser:
    values: dict[str, object] = {
        "external_id": "id-1",
        "dn": "uid=a,ou=财务部,ou=people,dc=x",
        "username": "a",
        "display_name": "甲",
        "email": "a@x",
        "phone": None,
        "employee_id": "E1",
        "department": "/财务部",
        "disabled": False,
        "modified": "1",
    }
    values.update(overrides)
    return SourceUser(**values)  # type: ignore[arg-type]


def _stored(**overrides: object) -> StoredUser:
    values: dict[str, object] = {
        "id": 7,
        "sub": "s" * 32,
        "external_id": "id-1",
        "username": "a",
        "display_name": "甲",
        "email": "a@x",
        "phone": None,
        "employee_id": "E1",
        "department": "/财务部",
        "dn": "uid=a,ou=财务部,ou=people,dc=x",
        "disabled": False,
        "disabled_reason": None,
    }
    values.update(overrides)
    return StoredUser(**values)  # type: ignore[arg-type]


def test_plan_user_kinds() -> None:
    assert plan_user(None, _entry()).kind == "create"  # type: ignore[union-attr]
    assert plan_user(_stored(), _entry()) is None
    # Same DN spelled differently is not a change.
    assert plan_user(_stored(dn="UID=a, OU=财务部,ou=People,dc=x"), _entry()) is None
    update = plan_user(_stored(), _entry(email="new@x"))
    assert update is not None and update.kind == "update"
    assert dict(update.fields) == {"email": ("a@x", "new@x")}
    move = plan_user(_stored(), _entry(department="/人事部", dn="uid=a,ou=人事部,ou=people,dc=x"))
    assert move is not None and move.kind == "move" and move.user_id == 7
    disable = plan_user(_stored(), _entry(disabled=True))
    assert disable is not None and disable.kind == "disable"
    assert disable.disabled_reason == DISABLED_IN_SOURCE
    enable = plan_user(_stored(disabled=True, disabled_reason=GONE_FROM_SOURCE), _entry())
    assert enable is not None and enable.kind == "enable"
    # An admin's disable in idhub is not undone by the directory.
    assert plan_user(_stored(disabled=True, disabled_reason="admin"), _entry()) is None
    gone = plan_gone(_stored())
    assert gone is not None and gone.kind == "disable" and gone.disabled_reason == GONE_FROM_SOURCE
    assert plan_gone(_stored(disabled=True)) is None


def test_username_conflicts_are_skipped_with_a_warning() -> None:
    changes = [
        c
        for c in (
            plan_user(None, _entry(external_id="n1", username="taken")),
            plan_user(None, _entry(external_id="n2", username="dup")),
            plan_user(None, _entry(external_id="n3", username="dup")),
            plan_user(None, _entry(external_id="n4", username="mine")),
        )
        if c
    ]
    kept, warnings = check_username_conflicts(changes, {"taken": "local|", "mine": "ldap:corp|n4"})
    assert [c.external_id for c in kept] == ["n2", "n4"]
    assert len(warnings) == 2 and "taken" in warnings[0]


def test_brake() -> None:
    plan = SyncPlan(source="ldap:corp", mode="full", entries_seen=100)
    plan.changes = [c for i in range(11) if (c := plan_gone(_stored(id=i, external_id=str(i))))]
    assert "11 of 100" in (
        check_brake(plan, enabled_in_store=100, max_disable_ratio=0.1, full_listing=True) or ""
    )
    plan.changes = plan.changes[:10]
    assert check_brake(plan, enabled_in_store=100, max_disable_ratio=0.1, full_listing=True) is None
    empty = SyncPlan(source="ldap:corp", mode="full", entries_seen=0)
    assert "no users" in (
        check_brake(empty, enabled_in_store=5, max_disable_ratio=1, full_listing=True) or ""
    )
    assert check_brake(empty, enabled_in_store=0, max_disable_ratio=0.1, full_listing=True) is None
    cut = SyncPlan(source="ldap:corp", mode="full", entries_seen=20, complete=False)
    assert "truncated" in (
        check_brake(cut, enabled_in_store=0, max_disable_ratio=1, full_listing=True) or ""
    )


def test_nested_groups_resolve_with_cycles() -> None:
    a = SourceGroup("ga", "cn=a,ou=g,dc=x", "a", ("uid=1,dc=x", "cn=b,ou=g,dc=x"))
    b = SourceGroup("gb", "cn=b,ou=g,dc=x", "b", ("UID=2,DC=x", "cn=c,ou=g,dc=x"))
    c = SourceGroup("gc", "cn=c,ou=g,dc=x", "c", ("uid=3,dc=x", "cn=a,ou=g,dc=x"))  # a cycle
    d = SourceGroup("gd", "cn=d,ou=g,dc=x", "d", (), member_of=("cn=a,ou=g,dc=x",))
    resolved = resolve_memberships([a, b, c, d], {"uid=4,dc=x": ["cn=d,ou=g,dc=x"]})
    everyone = {"uid=1,dc=x", "uid=2,dc=x", "uid=3,dc=x", "uid=4,dc=x"}
    # a, b and c contain each other: all three have the same effective members.
    assert resolved["ga"] == resolved["gb"] == resolved["gc"] == everyone
    assert resolved["gd"] == {"uid=4,dc=x"}


def test_incremental_filters_per_change_mark() -> None:
    from idhub.adapters.ldap import LdapDirectory
    from idhub.config import LdapSourceSettings

    def source(preset: str) -> LdapDirectory:
        chosen = PRESETS[preset]
        return LdapDirectory(
            LdapSourceSettings(
                name="x",
                url="ldap://h",
                user_base="dc=x",
                attributes=chosen.attributes,
                user_filter=chosen.user_filter,
                group_filter=chosen.group_filter,
                department_filter=chosen.department_filter,
                change_mark=chosen.change_mark,
            )
        )

    ad = source("active_directory")
    # A USN counter: strictly after the last one seen.
    assert ad._since("(objectClass=user)", "204817") == "(&(objectClass=user)(uSNChanged>=204818))"
    assert ad._since("(objectClass=user)", None) == "(objectClass=user)"
    ol = source("openldap")
    assert ol._since("(objectClass=inetOrgPerson)", "20260101000001Z") == (
        "(&(objectClass=inetOrgPerson)(modifyTimestamp>=20260101000001Z))"
    )


@pytest.mark.parametrize("attribute", ["samaccountname", "displayname", "mail", "employeeid"])
def test_an_entry_with_a_nul_in_a_stored_attribute_is_skipped_with_its_reason(
    attribute: str,
) -> None:
    # PostgreSQL stores no NUL: the entry is a mapping problem (skipped, reported) on both
    # databases, not a user the run fails to write on one of them.
    with pytest.raises(MappingProblem, match="NUL"):
        map_user(
            RECORDED_AD_DN,
            {**RECORDED_AD_USER, attribute: [b"a\x00b"]},
            attributes=AD,
            department_from="dn",
            department_base=AD_BASE,
        )
