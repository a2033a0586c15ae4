"""What a replica answers from memory while its database is away: revocations it has copied
(so the decision API's callers are still checked) and decision records it holds until the
database is back. The database here really goes away and comes back: an SQLite file whose
directory disappears, on an engine that opens a fresh connection per use."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.token_store import SqlTokenStore
from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.authz.deferred_audit import DeferredDecisionAudit
from idhub.core.clock import SystemClock
from idhub.errors import AuditError, AuditUnavailable, StorageUnavailable
from idhub.oidc.revocations import MirroredRevocations


class Database:
    """A migrated SQLite file that can be taken away and put back."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template = template
        self.dir = root / "db"
        self.engine: Engine = create_engine(
            f"sqlite:///{self.dir / 'idhub.db'}", poolclass=NullPool
        )

    def up(self) -> None:
        self.dir.mkdir(exist_ok=True)
        if not (self.dir / "idhub.db").exists():
            shutil.copyfile(self.template, self.dir / "idhub.db")

    def away(self) -> None:
        self.dir.rename(self.dir.with_name("db-away"))

    def back(self) -> None:
        self.dir.with_name("db-away").rename(self.dir)


@pytest.fixture
def database(sqlite_template: Path, tmp_path: Path) -> Iterator[Database]:
    db = Database(sqlite_template, tmp_path)
    yield db
    db.engine.dispose()


def _decision(n: int) -> PendingEvent:
    return PendingEvent(
        EventType.AUTHZ_DECISION, Actor("client", "reimburse"), f"oa:doc{n}", "denied", {"n": n}
    )


def test_decision_records_wait_for_the_database_in_order_and_bounded(database: Database) -> None:
    clock = SystemClock()
    audit = SqlAuditLog(database.engine, clock)
    held = DeferredDecisionAudit(audit, clock, limit=3)
    with pytest.raises(AuditUnavailable):  # the database is not there yet
        audit.record_many([_decision(0)])
    held.record([_decision(1), _decision(2)])
    held.record([_decision(3), _decision(4)])
    assert (held.held, held.dropped) == (3, 1)  # the oldest went past the bound
    with pytest.raises(AuditError):
        held.flush_once()
    assert held.held == 3

    database.up()
    held.record([_decision(5)])  # behind held records: queued, never ahead of them
    assert held.dropped == 2
    assert held.flush_once() == 3 and held.held == 0
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT target, details FROM audit_events ORDER BY seq")).all()
    assert [r[0] for r in rows] == ["oa:doc3", "oa:doc4", "oa:doc5"]
    assert all(json.loads(r[1])["decided_at"] > 0 for r in rows)
    assert audit.verify().ok
    held.record([_decision(6)])  # the database is back: straight into the chain
    assert held.held == 0 and audit.count() == 4


def test_the_revocation_copy_answers_while_the_database_is_away(database: Database) -> None:
    database.up()
    clock = SystemClock()
    store = SqlTokenStore(database.engine)
    now = clock.now()
    store.revoke_jti("revoked-jti", expires_at=now + 600, now=now)
    store.revoke_jti("expired-jti", expires_at=now - 1, now=now - 700)
    ticks = [0.0]
    mirror = MirroredRevocations(store, clock, max_age=60, monotonic=lambda: ticks[0])
    with pytest.raises(StorageUnavailable):
        database.away()
        try:
            mirror.is_revoked("revoked-jti")  # never refreshed: no copy to trust
        finally:
            database.back()
    assert mirror.refresh_once() == 1  # the expired one is not kept

    database.away()
    assert mirror.is_revoked("revoked-jti") is True
    assert mirror.is_revoked("good-jti") is False
    assert mirror.answered_from_memory == 2
    ticks[0] = 61.0  # the copy is too old to trust now
    with pytest.raises(StorageUnavailable):
        mirror.is_revoked("good-jti")
    database.back()
    assert mirror.is_revoked("revoked-jti") is True  # the database answers again
