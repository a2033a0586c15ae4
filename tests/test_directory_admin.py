"""Local departments and groups (core/directory/local_*.py through SqlDirectoryAdminStore) on a
real SQLite and PostgreSQL database: every change with its audit event and counter bump,
every refusal (source-owned, cycle, missing parent, unknown or disabled user, duplicates in any
spelling) changing nothing, the subtree re-path keeping people's department ids, and the
shipped policy's manager and group rules working from what an admin set."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, departments, group_members, users
from idhub.bootstrap import Services
from idhub.core.audit import Actor
from idhub.core.authz.decisions import Question
from idhub.errors import AuditError, Conflict, InvalidInput, NotFound, StorageError
from tests.test_atomic_audit import refused

ADMIN = Actor("admin", "cli")


@pytest.fixture
def company(services: Services) -> Services:
    services.migrate()
    ident = services.identity
    ident.create_user(username="alice", department_path="/总部/华东区/销售一部")
    ident.create_user(username="bob", department_path="/总部/华东区")
    ident.create_user(username="Carol")
    ident.create_user(username="ivan")
    ident.set_disabled(ident.require_user("ivan").id, True, reason="left")
    # What a sync owns: a department tree with one of its people, and a group.
    ident.ensure_department("/Finance/AP", source="ldap:corp")
    ident.create_user(
        username="lin", source="ldap:corp", external_id="u-lin", department_path="/Finance/AP"
    )
    ident.ensure_group("ldap-admins", source="ldap:corp")
    return services


def _rows(services: Services, query: Any) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(query))


def _events(services: Services) -> list[tuple[str, str, dict[str, Any]]]:
    rows = _rows(
        services,
        select(audit_events.c.event_type, audit_events.c.target, audit_events.c.details)
        .where(audit_events.c.event_type.like("directory.%"))
        .order_by(audit_events.c.seq),
    )
    return [(r.event_type, r.target, json.loads(r.details)) for r in rows]


def _paths(services: Services) -> dict[str, Any]:
    return {r.path: r for r in _rows(services, select(departments))}


def _verify(services: Services) -> None:
    report = services.audit_log.verify()
    assert report.ok, report


def test_add_needs_an_existing_parent_and_a_free_name_in_any_spelling(company: Services) -> None:
    local = company.local_departments
    before = company.directory_store.directory_counter()
    added = local.add("总部/华东区/销售二部/", actor=ADMIN)
    assert added.path == "/总部/华东区/销售二部" and added.source == "local"
    row = _paths(company)["/总部/华东区/销售二部"]
    assert row.parent_id == _paths(company)["/总部/华东区"].id and row.name == "销售二部"
    assert company.directory_store.directory_counter() == before + 1
    assert local.add("新公司", actor=ADMIN).path == "/新公司"  # a root of its own
    assert _paths(company)["/新公司"].parent_id is None
    # Under a source's department is allowed: a local team inside a synced one.
    assert local.add("/Finance/AP/Audit-Prep", actor=ADMIN).path == "/Finance/AP/Audit-Prep"
    # The parent is found in its canonical spelling too, and the child keeps the stored one.
    assert local.add("/finance/ap/Closing", actor=ADMIN).path == "/Finance/AP/Closing"

    with pytest.raises(NotFound) as missing:
        local.add("/总部/不存在/小组", actor=ADMIN)
    assert (
        str(missing.value)
        == "no parent department /总部/不存在 for /总部/不存在/小组 (add /总部/不存在 first)"
    )
    with pytest.raises(Conflict, match=r"department /总部/华东区/销售二部 already exists"):
        local.add("/总部/华东区/销售二部", actor=ADMIN)
    with pytest.raises(Conflict, match=r"department /Finance/AP/Closing already exists"):
        local.add("/Finance/AP/ＣＬＯＳＩＮＧ", actor=ADMIN)  # full-width, other case
    for bad, words in [
        ("/总部/a\x07b", "control characters"),
        ("/总部/" + "长" * 201, "longer than 200"),
        ("/总部/..", "is not a name"),
        ("/总部//x", "not of the form /A/B/C"),
        ("/总部/a／b", "contains '/'"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            local.add(bad, actor=ADMIN)
    added_events = [e for e in _events(company) if e[0] == "directory.department_added"]
    assert [e[1] for e in added_events] == [
        "department:/总部/华东区/销售二部",
        "department:/新公司",
        "department:/Finance/AP/Audit-Prep",
        "department:/Finance/AP/Closing",
    ]
    assert added_events[0][2] == {"path": "/总部/华东区/销售二部", "parent": "/总部/华东区"}
    _verify(company)


def test_move_re_paths_the_subtree_and_keeps_department_ids(company: Services) -> None:
    local = company.local_departments
    local.add("/总部/华东区/销售一部/一组", actor=ADMIN)
    local.add("/总部/华北区", actor=ADMIN)
    ids_before = {r.username: r.department_id for r in _rows(company, select(users))}
    east = _paths(company)["/总部/华东区"]

    moved = local.move("/总部/华东区", "/总部/华北区", name="华东大区", actor=ADMIN)
    assert (moved.before, moved.after) == ("/总部/华东区", "/总部/华北区/华东大区")
    assert moved.departments == 3 and moved.users == 2
    paths = _paths(company)
    assert "/总部/华东区" not in paths and "/总部/华东区/销售一部" not in paths
    assert paths["/总部/华北区/华东大区"].id == east.id
    assert paths["/总部/华北区/华东大区"].parent_id == paths["/总部/华北区"].id
    assert paths["/总部/华北区/华东大区/销售一部/一组"].name == "一组"
    assert {r.username: r.department_id for r in _rows(company, select(users))} == ids_before
    alice = company.identity.require_user("alice")
    assert alice.department_path == "/总部/华北区/华东大区/销售一部"
    assert _events(company)[-1] == (
        "directory.department_moved",
        "department:/总部/华北区/华东大区",
        {"path": ["/总部/华东区", "/总部/华北区/华东大区"], "departments": 3, "users": 2},
    )
    # To the top of the tree, and a move to where it already is changes nothing.
    assert local.move("/总部/华北区/华东大区/销售一部", "/", actor=ADMIN).after == "/销售一部"
    count = len(_events(company))
    assert local.move("/销售一部", "/", actor=ADMIN).departments == 0
    assert len(_events(company)) == count
    _verify(company)


def test_move_refusals_change_nothing(company: Services) -> None:
    local = company.local_departments
    local.add("/总部/华东区/销售一部/一组", actor=ADMIN)
    local.add("/总部/销售一部", actor=ADMIN)
    before = _paths(company)
    counter = company.directory_store.directory_counter()
    cases: list[tuple[tuple[str, str], dict[str, str], type[Exception], str]] = [
        (("/总部/华东区", "/总部/华东区"), {}, InvalidInput, "cannot move under itself"),
        (
            ("/总部/华东区", "/总部/华东区/销售一部/一组"),
            {},
            InvalidInput,
            "cannot move under /总部/华东区/销售一部/一组, one of its own departments",
        ),
        (("/Finance/AP", "/总部"), {}, InvalidInput, "/Finance/AP is owned by ldap:corp"),
        (
            ("/Finance", "/总部"),
            {},
            InvalidInput,
            "department /Finance is owned by ldap:corp; change it there",
        ),
        (("/总部/华东区", "/总部/没有"), {}, NotFound, "no department /总部/没有; the nearest"),
        (("/总部/华东区/销售一部", "/总部"), {}, Conflict, "/总部/销售一部 already exists"),
        (("/总部/华东区", "/总部"), {"name": "销售一部"}, Conflict, "already exists"),
        (("/总部/华东区", "/总部"), {"name": "a/b"}, InvalidInput, "contains '/'"),
    ]
    for (path, parent), extra, error, words in cases:
        with pytest.raises(error, match=words):
            local.move(path, parent, actor=ADMIN, **extra)
    assert _paths(company).keys() == before.keys()
    assert company.directory_store.directory_counter() == counter
    assert not [e for e in _events(company) if e[0] == "directory.department_moved"]


def test_a_local_department_holding_source_users_or_departments_stays(
    company: Services,
) -> None:
    local = company.local_departments
    company.identity.create_user(
        username="wu", source="dingtalk:hq", external_id="d-wu", department_path="/总部/财务部"
    )
    company.identity.ensure_department("/总部/华东区/同步组", source="wecom:hq")
    with pytest.raises(InvalidInput) as users_from:
        local.move("/总部/财务部", "/", actor=ADMIN)
    assert str(users_from.value) == (
        "department /总部/财务部 holds 1 user(s) from dingtalk:hq, which sets their department; "
        "move them there"
    )
    with pytest.raises(InvalidInput, match="holds /总部/华东区/同步组, which is owned by wecom:hq"):
        local.move("/总部/华东区", "/", actor=ADMIN)
    assert "/总部/财务部" in _paths(company)


def test_set_manager_by_canonical_username_and_clear(company: Services) -> None:
    local = company.local_departments
    counter = company.directory_store.directory_counter()
    set_ = local.set_manager("/总部/华东区", " BOB ", actor=ADMIN)
    assert (set_.before, set_.after, set_.changed) == (None, "bob", True)
    bob = company.identity.require_user("bob")
    assert _paths(company)["/总部/华东区"].manager_user_id == bob.id
    assert local.get("/总部/华东区").manager == "bob"
    assert not local.set_manager("/总部/华东区", "bob", actor=ADMIN).changed
    # A user from a source may manage a local department.
    assert local.set_manager("/总部/华东区", "LIN", actor=ADMIN).after == "lin"
    cleared = local.set_manager("/总部/华东区", None, actor=ADMIN)
    assert (cleared.before, cleared.after) == ("lin", None)
    assert _paths(company)["/总部/华东区"].manager_user_id is None
    assert company.directory_store.directory_counter() == counter + 3
    manager_events = [e for e in _events(company) if e[0] == "directory.department_manager_set"]
    assert [e[2]["manager"] for e in manager_events] == [
        [None, "bob"],
        ["bob", "lin"],
        ["lin", None],
    ]

    with pytest.raises(NotFound, match="no user named 'nobody'"):
        local.set_manager("/总部/华东区", "nobody", actor=ADMIN)
    with pytest.raises(InvalidInput, match="user ivan is disabled"):
        local.set_manager("/总部/华东区", "ivan", actor=ADMIN)
    with pytest.raises(InvalidInput, match="/Finance/AP is owned by ldap:corp; change it there"):
        local.set_manager("/Finance/AP", "bob", actor=ADMIN)
    company.identity.create_user(username="BOB")  # two canonical matches, neither exact
    with pytest.raises(Conflict, match=r"'Bob' matches several users \(BOB, bob\)"):
        local.set_manager("/总部/华东区", "Bob", actor=ADMIN)
    _verify(company)


def test_remove_only_an_empty_local_department(company: Services) -> None:
    local = company.local_departments
    local.add("/总部/空部门", actor=ADMIN)
    with pytest.raises(
        InvalidInput, match=r"still has 1 department\(s\) below it \(/总部/华东区/销售一部\)"
    ):
        local.remove("/总部/华东区", actor=ADMIN)
    with pytest.raises(InvalidInput, match=r"/总部/华东区/销售一部 still has 1 user\(s\)"):
        local.remove("/总部/华东区/销售一部", actor=ADMIN)
    company.identity.ensure_department("/Finance/AR", source="ldap:corp")
    with pytest.raises(InvalidInput, match="/Finance/AR is owned by ldap:corp"):
        local.remove("/Finance/AR", actor=ADMIN)
    assert local.remove("/总部/空部门", actor=ADMIN) == "/总部/空部门"
    assert "/总部/空部门" not in _paths(company)
    assert _events(company)[-1][0] == "directory.department_removed"
    _verify(company)


def test_groups_add_members_idempotently_and_refuse_source_owned_ones(company: Services) -> None:
    groups = company.local_groups
    added = groups.add("项目组", actor=ADMIN)
    assert added.source == "local"
    with pytest.raises(Conflict, match="group 项目组 already exists"):
        groups.add(" 项目组 ", actor=ADMIN)
    with pytest.raises(Conflict, match=r"group ldap-admins already exists \(owned by ldap:corp\)"):
        groups.add("LDAP-Admins", actor=ADMIN)
    with pytest.raises(InvalidInput, match="a group needs a name"):
        groups.add("  ", actor=ADMIN)

    # A local group may hold people of any source; names are found canonically.
    first = groups.add_members("项目组", ["alice", "carol", "LIN", "alice"], actor=ADMIN)
    assert first.changed == ["alice", "Carol", "lin"] and first.unchanged == []
    again = groups.add_members("项目组", ["alice", "bob"], actor=ADMIN)
    assert again.changed == ["bob"] and again.unchanged == ["alice"]
    group, members = groups.show("项目组")
    assert group.members == 4 and [p.username for p in members] == ["Carol", "alice", "bob", "lin"]
    assert company.identity.user_groups(company.identity.require_user("lin").id) == ["项目组"]

    counter = company.directory_store.directory_counter()
    with pytest.raises(NotFound, match="no user named 'nobody'"):
        groups.add_members("项目组", ["ivan", "nobody"], actor=ADMIN)
    assert len(groups.show("项目组")[1]) == 4  # ivan was not added either
    with pytest.raises(
        InvalidInput, match="group ldap-admins is owned by ldap:corp; change it there"
    ):
        groups.add_members("ldap-admins", ["alice"], actor=ADMIN)
    with pytest.raises(NotFound, match="no group named 'nope'"):
        groups.add_members("nope", ["alice"], actor=ADMIN)
    assert company.directory_store.directory_counter() == counter

    gone = groups.remove_members("项目组", ["bob", "ivan"], actor=ADMIN)
    assert gone.changed == ["bob"] and gone.unchanged == ["ivan"]
    with pytest.raises(InvalidInput, match="owned by ldap:corp"):
        groups.remove("ldap-admins", actor=ADMIN)
    assert groups.remove("项目组", actor=ADMIN) == ("项目组", 3)
    assert not _rows(company, select(group_members))
    assert [g.name for g in groups.all()] == ["ldap-admins"]
    kinds = [e[0] for e in _events(company)]
    assert kinds == ["directory.group_added"] + ["directory.group_member_added"] * 4 + [
        "directory.group_member_removed",
        "directory.group_removed",
    ]
    member_event = [e for e in _events(company) if e[0] == "directory.group_member_added"][2]
    assert member_event[1] == "group:项目组"
    assert member_event[2]["user"] == "lin" and member_event[2]["user_source"] == "ldap:corp"
    _verify(company)


def _approve(services: Services, user: str) -> bool:
    answer = services.decisions.current().decide(
        Question(
            domain="reimburse",
            type="expense_report",
            action="approve",
            user=user,
            owner="alice",
            dept="/总部/华东区/销售一部",
        )
    )
    return answer.allowed


def test_the_policy_engine_sees_a_manager_and_a_group_set_here_without_a_restart(
    company: Services,
) -> None:
    # The serving engine is built before the change, as in a running server.
    assert not _approve(company, "bob")
    assert company.authz.refresh_directory() is False
    company.local_departments.set_manager("/总部/华东区", "bob", actor=ADMIN)
    # What the background poll does (policy-poll, every 5 s): the counter moved, so it rebuilds.
    assert company.authz.refresh_directory() is True
    assert _approve(company, "bob")
    assert company.authz.engine.roles_for("bob", "reimburse") == ["dept_manager", "employee"]

    company.local_groups.add("财务审核组", actor=ADMIN)
    company.local_groups.add_members("财务审核组", ["Carol"], actor=ADMIN)
    assert company.authz.refresh_directory() is True
    assert "finance_reviewer" in company.authz.engine.roles_for("Carol", "reimburse")

    company.local_departments.set_manager("/总部/华东区", None, actor=ADMIN)
    assert company.authz.refresh_directory() is True
    assert not _approve(company, "bob")


def test_a_change_stands_only_with_its_event(company: Services) -> None:
    """Failures injected by a database trigger (tests/test_atomic_audit.py): the re-path of a
    whole subtree, a manager and memberships are rolled back when their event cannot be
    written, and no event claims a change whose write failed."""
    local, groups = company.local_departments, company.local_groups
    groups.add("项目组", actor=ADMIN)
    before = _paths(company)
    counter = company.directory_store.directory_counter()
    events = len(_events(company))
    with refused(company.engine, "audit_events", "INSERT"):
        with pytest.raises(AuditError):
            local.move("/总部/华东区", "/", actor=ADMIN)
        with pytest.raises(AuditError):
            local.set_manager("/总部/华东区", "bob", actor=ADMIN)
        with pytest.raises(AuditError):
            groups.add_members("项目组", ["alice", "bob"], actor=ADMIN)
    with refused(company.engine, "departments", "UPDATE"):
        # SQLite reports a trigger's RAISE(ABORT) as a constraint failure, which the store
        # takes for a destination taken meanwhile (Conflict); PostgreSQL as an error.
        with pytest.raises((StorageError, Conflict)):
            local.move("/总部/华东区", "/", actor=ADMIN)
    assert {p: (r.parent_id, r.manager_user_id) for p, r in _paths(company).items()} == {
        p: (r.parent_id, r.manager_user_id) for p, r in before.items()
    }
    assert groups.show("项目组")[1] == []
    assert company.directory_store.directory_counter() == counter
    assert len(_events(company)) == events
    _verify(company)
