"""Hot reload: a bad edit never replaces a good policy; good edits arrive through the file
watcher, SIGHUP, `idhub policy reload` and the policy_state table (replicas); directory changes
recompute derived roles. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.adapters.policy_state import SqlPolicyState
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import EventType
from idhub.core.authz.model import user_subject
from tests.conftest import REPO

NEW_LINE = "p, employee, oa, notice, publish, dept, allow\n"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "live-policies"
    shutil.copytree(REPO / "policies", target)
    return target


@pytest.fixture
def make(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    policy_dir: Path,
) -> Callable[..., Services]:
    def factory(watch: bool = False) -> Services:
        settings = make_settings(
            db_url,
            toml=f"[policy]\nwatch = {'true' if watch else 'false'}\n",
            env={"IDHUB_POLICY_DIR": str(policy_dir)},
        )
        services = make_services(settings)
        services.migrate()
        return services

    return factory


def events(services: Services, kind: EventType) -> list[dict[str, object]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.event_type == kind.value)
        ).all()
    return [{**r._mapping, "details": json.loads(r.details)} for r in rows]


def can_publish_notice(services: Services, user: str = "alice") -> bool:
    engine = services.authz.engine
    return engine.check(user_subject(user), "oa", "notice", "publish", "", "/总部").allowed


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def seed(services: Services) -> None:
    services.identity.create_user(username="alice", department_path="/总部")
    services.identity.create_user(username="carol", department_path="/总部/财务部/费用核算组")


def test_a_bad_edit_keeps_the_old_policy_and_is_recorded(
    make: Callable[..., Services], policy_dir: Path
) -> None:
    services = make()
    seed(services)
    authz = services.authz
    before = authz.engine
    csv = policy_dir / "oa.csv"
    good_text = csv.read_text(encoding="utf-8")
    bad_line = good_text.count("\n") + 1
    csv.write_text(
        good_text + "p, employee, oa, notice, publish, everywhere, allow\n", encoding="utf-8"
    )

    outcome = authz.reload(trigger="test")
    assert not outcome.ok
    assert authz.engine is before  # still serving the old one
    assert authz.readiness() == "ok"
    assert any(
        e.startswith(f"oa.csv:{bad_line}: error: unknown data scope") for e in outcome.errors
    )
    rejected = events(services, EventType.POLICY_REJECTED)
    assert len(rejected) == 1 and rejected[0]["outcome"] == "failure"
    details = rejected[0]["details"]
    assert details["serving"] == before.version
    assert any(f"oa.csv:{bad_line}" in e for e in details["errors"])  # type: ignore[union-attr]
    assert authz.status()["last_reload_ok"] is False
    assert authz.metrics.reloads_rejected == 1

    # A valid edit goes through: new version, audit event with the file hashes, published.
    csv.write_text(good_text + NEW_LINE, encoding="utf-8")
    assert not can_publish_notice(services)
    outcome = authz.reload(trigger="test")
    assert outcome.ok, outcome.errors
    assert authz.engine is not before and can_publish_notice(services)
    reloaded = events(services, EventType.POLICY_RELOADED)
    files = reloaded[-1]["details"]["files"]  # type: ignore[index]
    assert files["oa.csv"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert reloaded[-1]["details"]["previous"] == before.version  # type: ignore[index]
    latest = SqlPolicyState(services.engine).latest()
    assert latest is not None and latest.version == authz.engine.policy.version


def test_a_failing_policy_test_rejects_the_reload(
    make: Callable[..., Services], policy_dir: Path
) -> None:
    services = make()
    before = services.authz.engine
    # Valid syntax, but it lets alice approve her own report: the shipped tests catch it.
    path = policy_dir / "reimburse.csv"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "p, employee, reimburse, expense_report, approve, self, deny\n", ""
        )
        + "p, employee, reimburse, expense_report, approve, self, allow\n",
        encoding="utf-8",
    )
    outcome = services.authz.reload(trigger="test")
    assert not outcome.ok and not outcome.errors
    assert any("FAIL tests/reimburse_test.yaml:" in f for f in outcome.failed_tests)
    assert services.authz.engine is before


def test_file_watcher_and_sighup_reload(make: Callable[..., Services], policy_dir: Path) -> None:
    services = make(watch=True)
    seed(services)
    authz = services.authz
    services.runtime.start()
    try:
        first = authz.engine.version
        csv = policy_dir / "oa.csv"
        csv.write_text(csv.read_text(encoding="utf-8") + NEW_LINE, encoding="utf-8")
        assert wait_for(lambda: authz.engine.version != first), "watcher did not reload"
        assert can_publish_notice(services)
    finally:
        services.runtime.stop()

    # SIGHUP (the watcher is stopped now, so only the signal can trigger this reload)
    services2 = make(watch=False)
    authz2 = services2.authz
    services2.runtime.start()
    try:
        second = authz2.engine.version
        csv.write_text(csv.read_text(encoding="utf-8").replace(NEW_LINE, ""), encoding="utf-8")
        # Never send SIGHUP unless our handler is in place: the default action ends the process.
        assert signal.getsignal(signal.SIGHUP) == services2.runtime.handle_signal
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: authz2.engine.version != second), "SIGHUP did not reload"
        assert not can_publish_notice(services2)
    finally:
        services2.runtime.stop()
    assert signal.getsignal(signal.SIGHUP) is not services2.runtime.handle_signal


def test_replicas_follow_published_versions_and_directory_changes(
    make: Callable[..., Services], policy_dir: Path
) -> None:
    a, b = make(), make()
    seed(a)
    assert a.authz.engine.version == b.authz.engine.version
    # One policy version, one audit event: the replica loading it again adds none.
    assert len(events(a, EventType.POLICY_RELOADED)) == 1
    csv = policy_dir / "oa.csv"
    csv.write_text(csv.read_text(encoding="utf-8") + NEW_LINE, encoding="utf-8")
    assert a.authz.reload(trigger="idhub policy reload").ok
    assert not can_publish_notice(b)
    b.authz.poll_once()
    assert can_publish_notice(b)
    assert b.authz.engine.policy.version == a.authz.engine.policy.version
    reloaded = events(a, EventType.POLICY_RELOADED)
    assert [e["details"]["trigger"] for e in reloaded] == ["startup", "idhub policy reload"]

    # carol joins 财务审核组: after the next poll she holds finance_reviewer in reimburse.
    carol = b.identity.get_user_by_username("carol")
    assert carol is not None
    assert "finance_reviewer" not in b.authz.roles_for(carol, "reimburse")
    group = a.identity.ensure_group("财务审核组")
    a.identity.set_group_members(group.id, [carol.id])
    b.authz.poll_once()
    assert "finance_reviewer" in b.authz.roles_for(carol, "reimburse")
    assert b.authz.metrics.directory_rebuilds == 1
    b.authz.poll_once()  # nothing moved: no rebuild
    assert b.authz.metrics.directory_rebuilds == 1


def test_a_start_with_broken_files_serves_the_last_good_copy(
    make: Callable[..., Services], policy_dir: Path
) -> None:
    first = make()
    seed(first)
    good = first.authz.engine
    kept = first.settings.var_dir / "policy-last-good"
    assert (kept / "oa.csv").read_bytes() == (policy_dir / "oa.csv").read_bytes()

    csv = policy_dir / "oa.csv"
    good_text = csv.read_text(encoding="utf-8")
    csv.write_text(good_text + "p, employee, oa\n", encoding="utf-8")
    restarted = make()  # a new process starting on the broken files
    engine = restarted.authz.engine
    assert restarted.authz.serving_fallback
    assert engine.policy.version == good.policy.version
    assert engine.policy.root == str(kept)
    assert restarted.authz.readiness() == "ok"
    status = restarted.authz.status()
    assert status["last_reload_ok"] is False and status["serving_last_good_copy"] is True
    assert any("oa.csv:" in e for e in status["last_error"])
    # the broken files were not kept
    assert (kept / "oa.csv").read_text(encoding="utf-8") == good_text

    csv.write_text(good_text + NEW_LINE, encoding="utf-8")
    assert restarted.authz.reload(trigger="test").ok
    assert not restarted.authz.serving_fallback and can_publish_notice(restarted)
    assert (kept / "oa.csv").read_text(encoding="utf-8") == good_text + NEW_LINE
