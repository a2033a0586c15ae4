"""Segregation of duties in a directory sync against a real slapd, on SQLite and PostgreSQL:
a department manager moved into 财务部 would approve and pay expense reports (`approve-and-pay`,
block), so that move is held back and reported, dry run and real run alike, while the rest of
the sync applies."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.core.audit import EventType
from idhub.core.identifiers import is_under
from tests.slapd import PEOPLE_BASE
from tests.test_directory_sync import Corp, make_corp, next_second

pytestmark = pytest.mark.slapd
__all__ = ["make_corp"]  # the fixture, used by name

FINANCE_OU = f"ou=预算组,ou=财务部,ou=总部,{PEOPLE_BASE}"


def test_a_move_adding_a_blocking_violation_is_held_back(
    make_corp: Callable[..., Corp],
) -> None:
    corp = make_corp()
    assert corp.sync().status == "succeeded"
    company = corp.company
    managers = set(company.managers.values())
    boss = next(
        company.person(uid)
        for path, uid in sorted(company.managers.items())
        if not is_under(path, "/总部/财务部") and list(company.managers.values()).count(uid) == 1
    )
    clerk = next(
        p
        for p in company.people
        if p.uid not in managers and not p.disabled and not is_under(p.department, "/总部/财务部")
    )
    next_second()
    admin = corp.ldap.admin()
    for person in (boss, clerk):
        assert admin.modify_dn(person.dn, f"uid={person.uid}", new_superior=FINANCE_OU)
    admin.unbind()

    planned = corp.sync(dry_run=True)
    assert planned.plan.held_back == [boss.uid]
    [found] = [v for v in planned.plan.sod if v["rule"] == "approve-and-pay"]
    assert found["user"] == boss.uid and found["held_back"] is True
    sides = {s["side"]: s["paths"] for s in found["sides"]}
    assert any("manager of" in p["text"] for p in sides["reimburse:dept_manager"])
    assert any("/总部/财务部 and below" in p["text"] for p in sides["reimburse:expense_report:pay"])

    report = corp.sync()
    assert report.status == "succeeded"
    assert report.counts["move"] == 1 and report.counts["held_back"] == 1
    assert any(f"{boss.uid} (move) held back" in w for w in report.plan.warnings)
    # the clerk moved, the manager stayed where he was
    assert corp.dept_path(corp.user(clerk.uid).department_id) == "/总部/财务部/预算组"
    assert corp.dept_path(corp.user(boss.uid).department_id) == boss.department
    with corp.services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.event_type == EventType.SOD_VIOLATION.value)
        ).all()
    recorded = [json.loads(r.details) for r in rows]
    assert any(
        d.get("rule") == "approve-and-pay" and d.get("user") == boss.uid and d["held_back"]
        for d in recorded
    )
    # The next run holds him back again (the high-water mark did not pass his entry), and he
    # still manages his department: the manager attribute names his new DN, which is his.
    again = corp.sync()
    assert again.plan.held_back == [boss.uid], again.plan.as_dict()
