"""Segregation of duties on reload and on the command line: a reload adding a `block`
violation without an exception is rejected (the old policy keeps serving, `policy.rejected`
names the rule and the person), violations and exceptions are audit events; `idhub policy
sod`, `check`, `diff` and `reload` report them. Reloads on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.config import Settings, load_settings
from idhub.core.audit import EventType
from idhub.core.clock import FrozenClock
from tests.conftest import REPO, CliResult

# bob manages 华东区: dept_manager in reimburse, and approves travel requests in oa.
BOB_RULE = """
  - id: approver-and-traveller-approver
    severity: block
    reason: test rule
    sides: [reimburse:dept_manager, oa:travel_request:approve]
"""
BOB_EXCEPTION = """
  - {rule: approver-and-traveller-approver, user: bob, approved_by: ceo, reason: tiny team,
     expires: 2099-12-31}
"""


def add_rule(policy_dir: Path, rule: str = BOB_RULE, exception: str = "") -> int:
    """Adds a conflict rule (and an exception) to sod.yaml; returns the rule's line."""
    path = policy_dir / "sod.yaml"
    text = path.read_text(encoding="utf-8")
    head, tail = text.split("\nconflicts:\n", 1)
    line = head.count("\n") + 3
    text = head + "\nconflicts:\n" + rule.lstrip("\n") + tail
    if exception:
        text = text.replace("\nexceptions:\n", "\nexceptions:\n" + exception.lstrip("\n"), 1)
    path.write_text(text, encoding="utf-8")
    return line


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "live-policies"
    shutil.copytree(REPO / "policies", target)
    return target


def seed(services: Services) -> None:
    ident = services.identity
    ident.create_user(username="alice", department_path="/总部/华东区/销售一部")
    bob = ident.create_user(username="bob", department_path="/总部/华东区")
    carol = ident.create_user(username="carol", department_path="/总部/财务部/费用核算组")
    ident.set_department_manager("/总部/华东区", bob.id)
    ident.set_group_members(ident.ensure_group("财务审核组").id, [carol.id])


def events(services: Services, kind: EventType) -> list[dict[str, object]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.event_type == kind.value)
        ).all()
    return [{**r._mapping, "details": json.loads(r.details)} for r in rows]


CLOCK = FrozenClock(1_800_000_000.0)  # 2027-01-15


@pytest.fixture
def services(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    policy_dir: Path,
) -> Services:
    settings = make_settings(
        db_url, toml="[policy]\nwatch = false\n", env={"IDHUB_POLICY_DIR": str(policy_dir)}
    )
    CLOCK.set(1_800_000_000.0)
    made = make_services(settings, clock=CLOCK)
    made.migrate()
    seed(made)
    return made


def test_a_reload_adding_a_blocking_violation_is_rejected(
    services: Services, policy_dir: Path
) -> None:
    authz = services.authz
    before = authz.engine
    # carol's accepted exception is recorded when the policy is first loaded.
    granted = events(services, EventType.SOD_EXCEPTION_GRANTED)
    assert [(e["details"]["user"], e["details"]["rule"]) for e in granted] == [  # type: ignore[index]
        ("carol", "review-and-pay")
    ]

    line = add_rule(policy_dir)
    outcome = authz.reload(trigger="test")
    assert not outcome.ok
    assert authz.engine is before
    [error] = outcome.errors
    assert error.startswith(f"sod.yaml:{line}: error: blocking violation added: bob holds")
    rejected = events(services, EventType.POLICY_REJECTED)
    assert len(rejected) == 1 and "approver-and-traveller-approver" in str(rejected[0]["details"])

    # With an exception for bob the same rule goes through, and the exception is recorded.
    (policy_dir / "sod.yaml").write_text(
        (REPO / "policies" / "sod.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    add_rule(policy_dir, exception=BOB_EXCEPTION)
    outcome = authz.reload(trigger="test")
    assert outcome.ok, outcome.errors
    granted = events(services, EventType.SOD_EXCEPTION_GRANTED)
    assert [e["details"]["user"] for e in granted] == ["carol", "bob"]  # type: ignore[index]
    assert granted[-1]["details"]["approved_by"] == "ceo"  # type: ignore[index]


def test_a_violation_the_serving_policy_has_does_not_block_an_unrelated_edit(
    services: Services, policy_dir: Path
) -> None:
    authz = services.authz
    _ = authz.engine
    # bob moves into 财务部 as well: he now approves (dept_manager) and pays (finance).
    bob = services.identity.get_user_by_username("bob")
    assert bob is not None
    CLOCK.advance(10)  # the directory fingerprint includes update times
    services.identity.update_user(bob.id, department_path="/总部/财务部")
    assert authz.refresh_directory()
    csv = policy_dir / "oa.csv"
    csv.write_text(
        csv.read_text(encoding="utf-8") + "p, employee, oa, notice, publish, dept, allow\n",
        encoding="utf-8",
    )
    outcome = authz.reload(trigger="test")
    assert outcome.ok, outcome.errors
    # ...and the reload records the violations it found (the `warn` one too: erp's voucher
    # approval is granted for every department, which overlaps the one bob manages).
    found = events(services, EventType.SOD_VIOLATION)
    assert sorted((e["details"]["user"], e["details"]["rule"]) for e in found) == [  # type: ignore[index]
        ("bob", "approve-and-pay"),
        ("bob", "approve-expense-and-voucher"),
    ]
    found = [e for e in found if e["details"]["rule"] == "approve-and-pay"]  # type: ignore[index]
    paths = found[0]["details"]["paths"]  # type: ignore[index]
    assert any("manager of /总部/华东区" in p for p in paths["reimburse:dept_manager"])


def test_an_expiring_exception_is_recorded_and_does_not_reject_the_next_reload(
    services: Services, policy_dir: Path
) -> None:
    authz = services.authz
    _ = authz.engine
    # carol's exception (review-and-pay) holds through 2029-12-31 UTC.
    CLOCK.set(1_893_456_000.0)  # 2030-01-01T00:00:00Z
    csv = policy_dir / "oa.csv"
    csv.write_text(
        csv.read_text(encoding="utf-8") + "p, employee, oa, notice, publish, dept, allow\n",
        encoding="utf-8",
    )
    outcome = authz.reload(trigger="test")
    assert outcome.ok, outcome.errors
    [expired] = events(services, EventType.SOD_EXCEPTION_EXPIRED)
    assert expired["details"]["user"] == "carol"  # type: ignore[index]
    assert expired["details"]["expires"] == "2029-12-31"  # type: ignore[index]
    # A new rule that blocks someone else is still refused.
    add_rule(policy_dir)
    assert not authz.reload(trigger="test").ok


# ---------------------------------------------------------------------- the command line

Run = Callable[..., CliResult]


@pytest.fixture
def seeded(cli_config: Path, tmp_path: Path, policy_dir: Path) -> Path:
    config = cli_config
    config.write_text(
        config.read_text(encoding="utf-8").replace(str(REPO / "policies"), str(policy_dir)),
        encoding="utf-8",
    )
    made = Services(load_settings(config))
    try:
        made.migrate()
        seed(made)
    finally:
        made.close()
    return config


def test_policy_sod_lists_every_violation_with_its_paths(run_cli: Run, seeded: Path) -> None:
    result = run_cli("policy", "sod", config=seeded)
    assert result.code == 0, result.out + result.err
    assert "carol: review-and-pay [accepted]" in result.out
    assert "group 财务审核组 (assignments.yaml:9)" in result.out
    assert "(reimburse.csv:26)" in result.out
    assert "1 violation(s): 0 blocking, 0 warning(s), 1 accepted by exception" in result.out
    as_json = json.loads(run_cli("policy", "sod", "--json", config=seeded).out)
    assert as_json["ok"] is True and as_json["violations"][0]["user"] == "carol"
    sides = {s["side"]: s["paths"] for s in as_json["violations"][0]["sides"]}
    assert sides["reimburse:finance_reviewer"][0]["links"][0]["source"] == "assignments.yaml:9"


def test_check_diff_and_reload_report_an_added_blocking_violation(
    run_cli: Run, seeded: Path, policy_dir: Path, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    shutil.copytree(policy_dir, before)
    assert run_cli("policy", "check", config=seeded).code == 0
    line = add_rule(policy_dir)

    check = run_cli("policy", "check", config=seeded)
    assert check.code == 1
    assert f"{policy_dir / 'sod.yaml'}:{line}: error: segregation of duties: bob holds" in check.out
    # CI without a database: the test directory's bob manages 华东区 too.
    offline = run_cli("policy", "check", "--offline", config=seeded)
    assert offline.code == 1 and "segregation of duties: bob holds" in offline.out

    sod = run_cli("policy", "sod", "--json", config=seeded)
    assert sod.code == 1 and json.loads(sod.out)["ok"] is False

    diff = run_cli("policy", "diff", str(before), config=seeded)
    assert diff.code == 0, diff.err
    assert "+ sod approver-and-traveller-approver [block] bob: reimburse:dept_manager" in diff.out
    diff_json = json.loads(run_cli("policy", "diff", str(before), "--json", config=seeded).out)
    assert [v["user"] for v in diff_json["sod"]["added"]] == ["bob"]
    assert diff_json["sod"]["removed"] == []

    # `idhub policy reload` measures against the last good copy a previous run kept.
    shutil.rmtree(policy_dir)
    shutil.copytree(before, policy_dir)
    assert run_cli("policy", "reload", config=seeded).code == 0
    add_rule(policy_dir)
    bad = run_cli("policy", "reload", config=seeded)
    assert bad.code == 1
    assert "blocking violation added: bob holds" in bad.out and "policy rejected" in bad.out
