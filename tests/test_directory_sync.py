"""Directory sync against a real OpenLDAP slapd, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ldap3
import pytest
from sqlalchemy import func, select

from idhub.adapters.db import audit_events, change_counters, departments, groups, sync_runs, users
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.directory.plan import GONE_FROM_SOURCE
from idhub.errors import DirectoryError, SyncAborted
from tests.slapd import (
    LIMITED_DN,
    LIMITED_PASSWORD,
    PEOPLE_BASE,
    SOURCE_ENV,
    Slapd,
    effective_members,
    source_toml,
)

pytestmark = pytest.mark.slapd


@dataclass
class Corp:
    ldap: Slapd
    services: Services

    @property
    def company(self) -> Any:
        return self.ldap.company  # type: ignore[attr-defined]

    def sync(self, **kwargs: Any) -> Any:
        return self.services.directory_sync("corp").run(**kwargs)

    def rows(self, query: Any) -> list[Any]:
        with self.services.engine.connect() as conn:
            return list(conn.execute(query))

    def user(self, username: str) -> Any:
        found = self.rows(select(users).where(users.c.username == username))
        return found[0] if found else None

    def user_by_external(self, external_id: str) -> Any:
        return self.rows(select(users).where(users.c.external_id == external_id))[0]

    def dept_path(self, department_id: int | None) -> str | None:
        if department_id is None:
            return None
        return self.rows(select(departments.c.path).where(departments.c.id == department_id))[0][0]

    def entry_uuid(self, dn: str) -> str:
        conn = self.ldap.admin()
        conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["entryUUID"])
        value = str(conn.entries[0].entryUUID.value)
        conn.unbind()
        return value


@pytest.fixture
def make_corp(
    make_slapd: Callable[..., Slapd],
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
) -> Callable[..., Corp]:
    def factory(extra: str = "", ldap: Slapd | None = None, **company: Any) -> Corp:
        server = ldap or make_slapd(**company)
        settings = make_settings(db_url, toml=source_toml(server, extra=extra), env=SOURCE_ENV)
        return Corp(server, make_services(settings))

    return factory


def next_second() -> None:
    """modifyTimestamp has one-second resolution: edits after this land after the last run."""
    time.sleep(1.05 - (time.time() % 1.0))


def test_full_sync_mirrors_the_company(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp()
    report = corp.sync()
    company = corp.company
    assert report.status == "succeeded" and report.mode == "full"
    assert report.counts["create"] == len(company.people)

    stored = corp.rows(select(users).where(users.c.source == "ldap:corp"))
    assert len(stored) == len(company.people)
    by_name = {row.username: row for row in stored}
    for person in company.people:
        row = by_name[person.uid]
        assert row.display_name == person.name
        assert row.email == person.mail
        assert row.employee_id == person.employee_number
        assert corp.dept_path(row.department_id) == person.department
        assert row.dn == person.dn
        assert row.disabled == person.disabled
        assert row.external_id == corp.entry_uuid(person.dn)
        assert len(row.sub) >= 32 and person.uid not in row.sub
    assert len({row.sub for row in stored}) == len(stored)

    # Departments form a tree with managers from the OU entries.
    paths = {r.path: r for r in corp.rows(select(departments))}
    assert "/总部/财务部" in paths and paths["/总部/财务部"].parent_id == paths["/总部"].id
    for path, uid in company.managers.items():
        assert paths[path].manager_user_id == by_name[uid].id

    # Groups hold effective members: nested groups are expanded.
    for cn in company.groups:
        group_id = corp.rows(select(groups.c.id).where(groups.c.name == cn))[0][0]
        members = {u.username for u in stored if group_id in _groups_of(corp, u.id)}
        assert members == effective_members(company, cn), cn
    assert corp.rows(select(change_counters.c.value).where(change_counters.c.name == "directory"))

    changes = corp.rows(select(audit_events).where(audit_events.c.event_type == "sync.change"))
    user_changes = [json.loads(e.details) for e in changes if e.target.startswith("user:")]
    assert len(user_changes) == len(company.people)
    assert all(c["run_id"] == report.run_id and c["source"] == "ldap:corp" for c in user_changes)
    assert {c["after"]["username"] for c in user_changes} == {p.uid for p in company.people}
    assert all(c["kind"] == "create" and c["after"]["dn"] for c in user_changes)
    assert corp.rows(select(audit_events).where(audit_events.c.event_type == "sync.run"))

    # A second run right away finds nothing to do.
    again = corp.sync()
    assert again.mode == "incremental"
    assert sum(again.counts[k] for k in ("create", "update", "move", "disable", "enable")) == 0


def _groups_of(corp: Corp, user_id: int) -> set[int]:
    from idhub.adapters.db import group_members

    return {
        r[0]
        for r in corp.rows(
            select(group_members.c.group_id).where(group_members.c.user_id == user_id)
        )
    }


def test_incremental_touches_only_changed_entries(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp()
    corp.sync()
    next_second()
    # The bulk load may share a second with the first run; once that second is over the mark
    # moves past it, so the edits below are all a run after this one reads.
    settle = corp.sync()
    admin = corp.ldap.admin()
    target = corp.company.people[3]
    admin.modify(
        target.dn,
        {
            "mail": [(ldap3.MODIFY_REPLACE, ["new.mail@example.com"])],
            "displayName": [(ldap3.MODIFY_REPLACE, ["新名字"])],
        },
    )
    new_dn = f"uid=newhire,ou=财务部,ou=总部,{PEOPLE_BASE}"
    admin.add(
        new_dn,
        ["inetOrgPerson"],
        {"uid": "newhire", "cn": "新员工", "sn": "新", "mail": "newhire@example.com"},
    )
    admin.unbind()

    report = corp.sync()
    assert report.mode == "incremental"
    # Only the two entries changed since the last run are read.
    assert report.counts["seen"] == 2, (settle.plan.high_water, report.plan.as_dict())
    assert report.counts["update"] == 1 and report.counts["create"] == 1
    row = corp.user(target.uid)
    assert row.email == "new.mail@example.com" and row.display_name == "新名字"
    assert corp.dept_path(corp.user("newhire").department_id) == "/总部/财务部"
    event = [
        json.loads(e.details)
        for e in corp.rows(
            select(audit_events).where(audit_events.c.target == f"user:{target.uid}")
        )
        if json.loads(e.details)["kind"] == "update"
    ]
    assert event[0]["changes"]["email"] == [target.mail, "new.mail@example.com"]


def test_move_and_rename_keep_the_same_user_and_sub(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp()
    corp.sync()
    # The mover manages no department: a manager moved into 财务部 would approve and pay
    # expense reports, which policies/sod.yaml blocks (tests/test_sod_sync.py holds that back).
    managers = set(corp.company.managers.values())
    renamed = corp.company.people[6]
    mover = next(p for p in corp.company.people[5:] if p.uid not in managers and p is not renamed)
    before_mover, before_renamed = corp.user(mover.uid), corp.user(renamed.uid)
    counter_before = corp.services.directory_store.directory_counter()
    next_second()
    admin = corp.ldap.admin()
    assert admin.modify_dn(
        mover.dn, f"uid={mover.uid}", new_superior=f"ou=预算组,ou=财务部,ou=总部,{PEOPLE_BASE}"
    )
    assert admin.modify_dn(renamed.dn, "uid=renamed.user")
    admin.unbind()

    report = corp.sync()
    assert report.counts["move"] == 2, report.plan.as_dict()
    moved = corp.user(mover.uid)
    assert (moved.id, moved.sub) == (before_mover.id, before_mover.sub)
    assert corp.dept_path(moved.department_id) == "/总部/财务部/预算组"
    assert moved.dn.startswith(f"uid={mover.uid},ou=预算组")
    now_renamed = corp.user("renamed.user")
    assert (now_renamed.id, now_renamed.sub) == (before_renamed.id, before_renamed.sub)
    assert corp.user(renamed.uid) is None
    assert corp.services.directory_store.directory_counter() > counter_before


def test_deleted_user_is_disabled_and_signed_out_everywhere(
    make_corp: Callable[..., Corp],
) -> None:
    corp = make_corp()
    corp.sync()
    leaver = next(p for p in corp.company.people if not p.disabled and p.uid != "u000000")
    row = corp.user(leaver.uid)
    user = corp.services.identity.get_user(row.id)
    assert user is not None
    _cookie, session = corp.services.sessions.start(user, amr=["pwd"])
    # The user had signed in to OA, which takes back-channel logout.
    from tests.sso_support import register_client

    register_client(corp.services, "oa", backchannel_logout_uri="http://127.0.0.1:9/bc-logout")
    corp.services.sessions.add_client(session.sid, "oa")
    admin = corp.ldap.admin()
    assert admin.delete(leaver.dn)
    admin.unbind()

    report = corp.sync(full=True)
    assert report.counts["disable"] == 1
    gone = corp.user(leaver.uid)
    assert gone is not None, "users are never deleted"
    assert gone.disabled and gone.disabled_reason == GONE_FROM_SOURCE and gone.sub == row.sub
    ended = corp.services.sessions.get(session.sid)
    assert ended is not None and ended.ended_at is not None
    assert report.counts["sessions_ended"] == 1
    from idhub.adapters.db import logout_deliveries

    queued = corp.rows(select(logout_deliveries).where(logout_deliveries.c.client_id == "oa"))
    assert len(queued) == 1 and queued[0].sid == session.sid and queued[0].user_sub == row.sub


def test_user_leaving_the_base_and_coming_back_is_re_enabled(
    make_corp: Callable[..., Corp],
) -> None:
    corp = make_corp()
    corp.sync()
    person = corp.company.people[7]
    assert not person.disabled
    admin = corp.ldap.admin()
    admin.modify_dn(person.dn, f"uid={person.uid}", new_superior="ou=services,dc=example,dc=com")
    corp.sync(full=True)
    assert corp.user(person.uid).disabled
    admin.modify_dn(
        f"uid={person.uid},ou=services,dc=example,dc=com",
        f"uid={person.uid}",
        new_superior=person.dn.split(",", 1)[1],
    )
    admin.unbind()
    report = corp.sync(full=True)
    assert report.counts["enable"] == 1
    back = corp.user(person.uid)
    assert not back.disabled and back.disabled_reason is None


def test_disabled_in_directory_is_disabled_here_but_admin_disable_sticks(
    make_corp: Callable[..., Corp],
) -> None:
    corp = make_corp()
    corp.sync()
    a, b = [p for p in corp.company.people if not p.disabled][1:3]
    corp.services.identity.set_disabled(corp.user(b.uid).id, True, reason="admin")
    next_second()
    admin = corp.ldap.admin()
    admin.modify(a.dn, {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE, ["000001010000Z"])]})
    admin.modify(b.dn, {"mail": [(ldap3.MODIFY_REPLACE, ["b@example.com"])]})
    admin.unbind()
    report = corp.sync()
    assert report.counts["disable"] == 1
    assert corp.user(a.uid).disabled
    # b was disabled by an admin in idhub: the sync updates it but does not re-enable it.
    row_b = corp.user(b.uid)
    assert row_b.disabled and row_b.disabled_reason == "admin" and row_b.email == "b@example.com"


def test_safety_brake_stops_a_mass_disable(make_corp: Callable[..., Corp], run_cli: Any) -> None:
    corp = make_corp()
    corp.sync()
    enabled_before = _enabled(corp)
    admin = corp.ldap.admin()
    for person in corp.company.people[10:]:
        assert admin.delete(person.dn)
    admin.unbind()

    with pytest.raises(SyncAborted, match="would disable"):
        corp.sync(full=True)
    assert _enabled(corp) == enabled_before, "nothing may change when the brake trips"
    last = corp.rows(select(sync_runs).order_by(sync_runs.c.started_at.desc()))[0]
    assert last.status == "aborted" and "would disable" in last.error

    dry = corp.sync(full=True, dry_run=True)
    assert dry.plan.brake is not None and dry.counts["disable"] > 0
    assert _enabled(corp) == enabled_before

    forced = corp.sync(full=True, force=True)
    assert forced.status == "succeeded"
    assert _enabled(corp) == sum(1 for p in corp.company.people[:10] if not p.disabled)


def _enabled(corp: Corp) -> int:
    return corp.rows(
        select(func.count())
        .select_from(users)
        .where(users.c.source == "ldap:corp", users.c.disabled.is_(False))
    )[0][0]


def test_empty_result_trips_the_brake(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp()
    corp.sync()
    enabled = _enabled(corp)
    # Same server, a filter that now matches nobody (e.g. an objectClass typo by an admin).
    empty = make_corp(extra='user_filter = "(objectClass=nosuchclass)"', ldap=corp.ldap)
    with pytest.raises(SyncAborted, match="no users"):
        empty.sync(full=True)
    assert _enabled(corp) == enabled


def test_truncated_result_trips_the_brake(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp()
    corp.sync()
    enabled = _enabled(corp)
    limited = make_corp(ldap=corp.ldap, extra="")
    # The `limited` account gets 20 entries per search: the server says sizeLimitExceeded.
    source = limited.services.settings.ldap_sources["corp"]
    from dataclasses import replace

    from idhub.config import Secret

    object.__setattr__(
        limited.services.settings,
        "ldap_sources",
        {"corp": replace(source, bind_dn=LIMITED_DN, bind_password=Secret(LIMITED_PASSWORD))},
    )
    with pytest.raises(SyncAborted, match="truncated"):
        limited.sync(full=True)
    assert _enabled(corp) == enabled


def test_ldap_down_fails_the_run_and_disables_nobody(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp()
    corp.sync()
    enabled = _enabled(corp)
    corp.ldap.stop()
    started = time.monotonic()
    with pytest.raises(DirectoryError, match="cannot be reached"):
        corp.sync(full=True)
    assert time.monotonic() - started < 10
    assert _enabled(corp) == enabled
    last = corp.rows(select(sync_runs).order_by(sync_runs.c.started_at.desc()))[0]
    assert last.status == "failed" and "cannot be reached" in last.error
    # The lease was released: a later run (directory back) is not blocked.
    corp.ldap.start()
    assert corp.sync(full=True).status == "succeeded"


def test_two_replicas_never_sync_one_source_at_once(make_corp: Callable[..., Corp]) -> None:
    import os
    import subprocess
    import sys

    from idhub.errors import Conflict

    corp = make_corp()
    store = corp.services.directory_store
    import socket

    live_owner = f"{socket.gethostname()}:{os.getpid()}:other"
    assert store.acquire_lease("ldap:corp", live_owner, ttl=60) == ""
    with pytest.raises(Conflict):
        corp.sync()
    # A holder that died (kill -9) on this host is recognised and its lease taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.release_lease("ldap:corp", live_owner)
    dead_owner = f"{socket.gethostname()}:{dead.pid}:gone"
    assert store.acquire_lease("ldap:corp", dead_owner, ttl=60) == ""
    store.start_run("stale", "ldap:corp", mode="full", dry_run=False)
    assert corp.sync().status == "succeeded"
    stale = corp.rows(select(sync_runs).where(sync_runs.c.id == "stale"))[0]
    assert stale.status == "failed" and "interrupted" in stale.error


def test_serve_runs_syncs_in_the_background(
    make_slapd: Callable[..., Slapd], make_live_server: Callable[..., Any], db_url: str
) -> None:
    ldap = make_slapd(users=15, departments=4, groups=2)
    toml = "[sync]\ninterval = 1\n\n" + source_toml(ldap)
    server = make_live_server(db_url, toml=toml, env=SOURCE_ENV)
    services: Services = server.services
    assert services.runtime.health("directory-sync").running

    def synced_users() -> int:
        with services.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    store = services.directory_store
    deadline = time.monotonic() + 20
    # Users show up batch by batch; the run's state is saved once it has finished.
    while store.state("ldap:corp").last_full_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.state("ldap:corp").last_full_at is not None  # the first round is a full one
    assert synced_users() == 15
    # Later rounds are incremental: a modification shows up without anyone running a command.
    next_second()
    admin = ldap.admin()
    admin.modify(
        ldap.company.people[4].dn,  # type: ignore[attr-defined]
        {"mail": [(ldap3.MODIFY_REPLACE, ["bg@example.com"])]},
    )
    admin.unbind()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = _first_user(services, ldap.company.people[4].uid)  # type: ignore[attr-defined]
        if row.email == "bg@example.com":
            break
        time.sleep(0.2)
    assert row.email == "bg@example.com"
    while store.state("ldap:corp").last_incremental_at is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.state("ldap:corp").last_incremental_at is not None


def _first_user(services: Services, username: str) -> Any:
    with services.engine.connect() as conn:
        return conn.execute(select(users).where(users.c.username == username)).first()


def test_memberof_mode_reads_memberships_from_users(make_corp: Callable[..., Corp]) -> None:
    from tests.slapd import GROUPS_BASE, Slapd

    corp = make_corp(
        # Groups list their members under an attribute idhub is told to ignore here, so only
        # the users' memberOf (kept by slapd's memberof overlay) can place them in groups.
        extra='membership = "memberOf"\n\n[directory.ldap.corp.attributes]\nmember = "seeAlso"\n',
        memberof=True,
    )
    assert isinstance(corp.ldap, Slapd) and corp.ldap.memberof
    people = corp.company.people
    admin = corp.ldap.admin()
    assert admin.add(
        f"cn=审计组,{GROUPS_BASE}",
        ["groupOfNames"],
        {"cn": "审计组", "member": [people[1].dn, people[2].dn]},
    )
    assert admin.add(
        f"cn=内审,{GROUPS_BASE}",
        ["groupOfNames"],
        {"cn": "内审", "member": [people[3].dn, f"cn=审计组,{GROUPS_BASE}"]},
    )
    admin.unbind()
    corp.sync()
    with corp.services.engine.connect() as conn:
        from idhub.adapters.db import group_members

        rows = conn.execute(
            select(groups.c.name, users.c.username)
            .select_from(group_members.join(groups).join(users))
            .where(groups.c.name.in_(["审计组", "内审"]))
        ).all()
    found = {(g, u) for g, u in rows}
    assert {("审计组", people[1].uid), ("审计组", people[2].uid)} <= found
    # 内审 holds 审计组 (its memberOf), so its members are inside 内审 as well.
    assert {("内审", people[3].uid), ("内审", people[1].uid), ("内审", people[2].uid)} <= found
    assert len(found) == 5


def test_department_from_an_attribute(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp(extra='department_from = "attribute"')
    person, other = corp.company.people[2], corp.company.people[3]
    admin = corp.ldap.admin()
    admin.modify(person.dn, {"departmentNumber": [(ldap3.MODIFY_REPLACE, ["总部/采购部/询价组"])]})
    admin.unbind()
    corp.sync()
    assert corp.dept_path(corp.user(person.uid).department_id) == "/总部/采购部/询价组"
    assert corp.user(other.uid).department_id is None  # no attribute: no department
    paths = {r.path for r in corp.rows(select(departments))}
    assert {"/总部", "/总部/采购部", "/总部/采购部/询价组"} <= paths


def test_group_renamed_keeps_its_id_and_deleted_group_goes(make_corp: Callable[..., Corp]) -> None:
    from tests.slapd import GROUPS_BASE

    corp = make_corp()
    corp.sync()
    before = {r.name: r.id for r in corp.rows(select(groups))}
    admin = corp.ldap.admin()
    assert admin.modify_dn(f"cn=g00002,{GROUPS_BASE}", "cn=报销审批组")
    assert admin.delete(f"cn=g00003,{GROUPS_BASE}")
    admin.unbind()
    report = corp.sync(full=True)
    after = {r.name: r.id for r in corp.rows(select(groups))}
    assert after["报销审批组"] == before["g00002"]
    assert "g00002" not in after and "g00003" not in after
    assert report.counts["groups_deleted"] == 1
    events = [
        json.loads(e.details)
        for e in corp.rows(select(audit_events).where(audit_events.c.target == "group:g00003"))
    ]
    assert events[-1]["kind"] == "group_deleted"


def test_incremental_runs_find_deletions_with_an_id_pass(make_corp: Callable[..., Corp]) -> None:
    corp = make_corp(extra="id_check_interval = 0")
    corp.sync()
    leaver = next(p for p in corp.company.people[1:] if not p.disabled)
    admin = corp.ldap.admin()
    assert admin.delete(leaver.dn)
    admin.unbind()
    report = corp.sync()  # incremental: the deleted entry has no modifyTimestamp to find
    assert report.mode == "reconcile"
    assert report.counts["disable"] == 1
    assert corp.user(leaver.uid).disabled_reason == GONE_FROM_SOURCE
    # Without the pass being due, an incremental run does not list every id.
    quiet = make_corp(ldap=corp.ldap)
    assert quiet.sync().mode == "incremental"
