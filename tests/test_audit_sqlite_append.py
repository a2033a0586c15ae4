"""The SQLite append keeps one pooled connection (adapters/audit_sqlite_append.py
`HeldWriter`): appends back to back check nothing out of the pool, a failed append drops its
connection for good, and `engine.dispose()` closes the held one for real. Every append is
still committed before `record` returns: another engine sees it at once."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import Engine, event

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import create_db_engine
from idhub.config import DatabaseSettings
from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.clock import SystemClock
from idhub.errors import AuditError


def _engine(url: str) -> Engine:
    return create_db_engine(DatabaseSettings(url=url))


def _record(log: SqlAuditLog, i: int) -> None:
    log.record(EventType.TOKEN_ISSUED, actor=Actor("client", "c"), target=f"t{i}")


def test_appends_do_not_check_out_a_connection_each(sqlite_db_url: str) -> None:
    engine = _engine(sqlite_db_url)
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *_args: checkouts.append(1))
    log = SqlAuditLog(engine, SystemClock())
    try:
        for i in range(10):
            _record(log, i)
        log.record_many(
            [PendingEvent(EventType.SYNC_CHANGE, Actor.system(), f"u{i}") for i in range(5)]
        )
        assert len(checkouts) == 1
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_each_append_is_committed_when_record_returns(sqlite_db_url: str) -> None:
    engine, other = _engine(sqlite_db_url), _engine(sqlite_db_url)
    log, reader = SqlAuditLog(engine, SystemClock()), SqlAuditLog(other, SystemClock())
    try:
        for i in range(3):
            _record(log, i)
            head = reader.head()  # another connection: it sees only what is committed
            assert head is not None and head.target == f"t{i}"
        assert reader.verify().ok
    finally:
        engine.dispose()
        other.dispose()


def test_a_failed_append_drops_its_connection_and_the_next_one_takes_a_fresh_one(
    sqlite_db_url: str,
) -> None:
    engine = _engine(sqlite_db_url)
    log = SqlAuditLog(engine, SystemClock())
    invalidated: list[object] = []
    event.listen(engine, "invalidate", lambda *_args: invalidated.append(1))
    try:
        _record(log, 0)
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE audit_events RENAME TO audit_events_away")
        with pytest.raises(AuditError):
            _record(log, 1)
        assert invalidated == [1]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE audit_events_away RENAME TO audit_events")
        _record(log, 2)
        assert [e.target for e in log.search(newest_first=False)] == ["t0", "t2"]
        assert log.verify().ok
    finally:
        engine.dispose()


def test_dispose_closes_the_held_connection_and_the_log_goes_on(sqlite_db_url: str) -> None:
    engine = _engine(sqlite_db_url)
    closed: list[object] = []
    event.listen(engine, "close", lambda *_args: closed.append(1))
    log = SqlAuditLog(engine, SystemClock())
    _record(log, 0)
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    engine.dispose()
    assert closed == [1]  # closed for real, not left open in the disposed pool
    _record(log, 1)  # a new pool, a new held connection
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert log.count() == 2 and log.verify().ok
    engine.dispose()


def test_a_memory_database_appends_on_the_pools_own_connection() -> None:
    engine = _engine("sqlite:///:memory:")
    from idhub.adapters.db import metadata

    metadata.create_all(engine)
    log = SqlAuditLog(engine, SystemClock())
    try:
        _record(log, 0)
        _record(log, 1)
        assert log.count() == 2 and log.verify().ok
    finally:
        engine.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_appends_on_a_connection_of_its_own(sqlite_db_url: str) -> None:
    engine = _engine(sqlite_db_url)
    log = SqlAuditLog(engine, SystemClock())
    try:
        _record(log, 0)  # the parent holds a connection now
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                _record(log, 1)  # not on the parent's held connection (SQLite forbids it)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        _record(log, 2)  # the parent's held connection still works
        assert [e.target for e in log.search(newest_first=False)] == ["t0", "t1", "t2"]
        assert log.verify().ok
    finally:
        engine.dispose()
