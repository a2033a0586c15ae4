"""Lone driver reads (adapters/driver_read.py): on a SQLite file and on PostgreSQL they run on
connections held out of the pool, which must still see every commit, give up a connection
that failed (or, on PostgreSQL, whose session ended, or while the database cools down), and
let go of everything when the engine is disposed."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.pool import NullPool

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import create_db_engine
from idhub.adapters.db import throttle_counters
from idhub.adapters.driver_read import HELD_READERS, fetch_all, placeholder
from idhub.adapters.token_store import SqlTokenStore
from idhub.adapters.unit_of_work import SqlUnitOfWork, begin
from idhub.config import DatabaseSettings
from idhub.core.clock import SystemClock
from idhub.errors import StorageError, StorageUnavailable
from tests.db_reset import empty_postgres

SQL = "SELECT failures FROM throttle_counters WHERE kind = {m} AND value = {m}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(DatabaseSettings(url=db_url))
    yield engine
    engine.dispose()


def _read(engine: Engine) -> list[tuple[object, ...]]:
    return fetch_all(engine, SQL.format(m=placeholder(engine)), ["client", "a@b"])


def _insert(engine: Engine, failures: int) -> None:
    with begin(engine) as conn:  # joins an open unit of work
        conn.execute(
            throttle_counters.insert().values(
                kind="client",
                value="a@b",
                failures=failures,
                first_failed_at=1.0,
                last_failed_at=1.0,
            )
        )


def test_a_read_sees_what_another_connection_committed_just_before(
    engine: Engine, db_url: str
) -> None:
    assert _read(engine) == []  # on SQLite the connection is now held for the next read
    other = create_db_engine(DatabaseSettings(url=db_url))  # another process, in effect
    try:
        _insert(other, 3)
        assert _read(engine) == [(3,)]
        with other.begin() as conn:
            conn.exec_driver_sql("UPDATE throttle_counters SET failures = 4")
        assert _read(engine) == [(4,)]
    finally:
        other.dispose()


class _Undo(Exception):
    pass


def test_inside_a_unit_of_work_the_read_sees_the_units_own_changes(engine: Engine) -> None:
    assert _read(engine) == []
    units = SqlUnitOfWork(engine, SqlAuditLog(engine, SystemClock()), group=False)
    with pytest.raises(_Undo), units.atomic():
        _insert(engine, 2)  # joins the unit's transaction
        assert _read(engine) == [(2,)]
        raise _Undo
    assert _read(engine) == []


def test_lone_sqlite_reads_do_not_check_out_a_connection_each(sqlite_db_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=sqlite_db_url))
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *_args: checkouts.append(1))
    try:
        for _ in range(20):
            assert _read(engine) == []
        assert len(checkouts) == 1
    finally:
        engine.dispose()


def test_held_readers_are_bounded_and_given_back_on_dispose(sqlite_db_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=sqlite_db_url))
    readers = HELD_READERS + 3
    together = threading.Barrier(readers, timeout=10)

    def meet() -> int:
        together.wait()  # every reader is inside its SELECT at once: a connection each
        return 1

    closed: list[object] = []
    event.listen(engine, "connect", lambda conn, _rec: conn.create_function("meet", 0, meet))
    event.listen(engine, "close", lambda *_args: closed.append(1))
    try:
        with ThreadPoolExecutor(readers) as pool:
            rows = list(pool.map(lambda _i: fetch_all(engine, "SELECT meet()", []), range(readers)))
        assert rows == [[(1,)]] * readers
        assert engine.pool.checkedout() == HELD_READERS  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    assert len(closed) == readers  # the held ones closed for real, not left in the old pool
    # The engine still works after a dispose (a new pool), and holds again.
    assert _read(engine) == []
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    engine.dispose()


def test_a_failed_read_is_a_storage_error_and_its_connection_is_dropped(
    sqlite_db_url: str,
) -> None:
    from idhub.adapters.throttle_store import SqlThrottleStore
    from idhub.core.throttle import ThrottleKey

    engine = create_db_engine(DatabaseSettings(url=sqlite_db_url))
    store = SqlThrottleStore(engine)
    try:
        assert store.counters([ThrottleKey("client", "a@b")]) == []
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE throttle_counters RENAME TO gone")
        with pytest.raises(StorageError):
            store.counters([ThrottleKey("client", "a@b")])
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE gone RENAME TO throttle_counters")
        assert store.counters([ThrottleKey("client", "a@b")]) == []
    finally:
        engine.dispose()


def test_a_memory_database_is_read_on_the_pools_own_connection() -> None:
    engine = create_db_engine(DatabaseSettings(url="sqlite:///:memory:"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (7)")
        assert fetch_all(engine, "SELECT n FROM t WHERE n = ?", [7]) == [(7,)]
    finally:
        engine.dispose()


# PostgreSQL: lone reads are held out of the pool too (adapters/pg_held_readers.py), in
# autocommit, and still meet what the pool's checkout checked.


@pytest.fixture
def pg_engine(pg_database: str, pg_reset_engine: Engine) -> Iterator[Engine]:
    empty_postgres(pg_reset_engine)
    engine = create_db_engine(DatabaseSettings(url=pg_database))
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    return int(fetch_all(engine, "SELECT pg_backend_pid()", [])[0][0])


def test_lone_postgresql_reads_do_not_check_out_a_connection_each(pg_engine: Engine) -> None:
    checkouts: list[object] = []
    event.listen(pg_engine, "checkout", lambda *_args: checkouts.append(1))
    pids = {_backend_pid(pg_engine) for _ in range(20)}
    assert len(checkouts) == 1
    assert len(pids) == 1  # one session, kept (and its prepared statements with it)
    assert pg_engine.pool.checkedout() == 1  # type: ignore[attr-defined]


def test_a_held_postgresql_reader_whose_session_ended_is_given_up(
    pg_engine: Engine, pg_database: str
) -> None:
    first = _backend_pid(pg_engine)
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    admin.dispose()
    time.sleep(0.2)  # the server's FATAL message and end of file reach the socket
    # No error: the ended session is noticed before use and a fresh connection reads.
    second = _backend_pid(pg_engine)
    assert second != first
    assert _read(pg_engine) == []


def test_a_held_postgresql_reader_is_not_used_while_the_database_cools_down(
    pg_engine: Engine,
) -> None:
    from idhub.adapters._pg_deadline import stall_guard
    from idhub.adapters.throttle_store import SqlThrottleStore
    from idhub.core.throttle import ThrottleKey

    store = SqlThrottleStore(pg_engine)
    assert store.counters([ThrottleKey("client", "a@b")]) == []  # a connection held now
    guard = stall_guard(pg_engine)
    assert guard is not None
    guard.cooldown = 0.3
    guard.stalled()  # as after two round trips that ran out of time, nothing answered between
    guard.stalled()
    # Refused at once, as a checkout is while cooling down, not sent on the held connection.
    with pytest.raises(StorageUnavailable):
        store.counters([ThrottleKey("client", "a@b")])
    time.sleep(0.35)
    assert store.counters([ThrottleKey("client", "a@b")]) == []


def test_a_forked_child_does_not_read_on_its_parents_held_connection(pg_engine: Engine) -> None:
    parent = _backend_pid(pg_engine)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write_end, str(_backend_pid(pg_engine)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    reported = os.read(read_end, 64).decode()
    os.close(read_end)
    assert reported.isdigit() and int(reported) != parent
    assert _backend_pid(pg_engine) == parent  # the parent's session is still its own


def test_a_small_postgresql_pool_holds_no_reader(pg_database: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=pg_database, pool_size=3))
    try:
        assert _backend_pid(engine) > 0
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_the_revocation_check_is_a_lone_read_that_sees_each_revocation(engine: Engine) -> None:
    """`SqlTokenStore.is_revoked`, on every bearer check: one kept connection for all of them
    (on PostgreSQL one autocommit statement each, not BEGIN, SELECT and ROLLBACK), and each
    answer as fresh as the last commit."""
    store = SqlTokenStore(engine)
    now = time.time()
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *_args: checkouts.append(1))
    assert not any(store.is_revoked(f"jti-{i}") for i in range(10))
    store.revoke_jti("jti-3", expires_at=now + 600, now=now)
    assert store.is_revoked("jti-3") and not store.is_revoked("jti-4")
    # The revocation's own write took one; the ten checks and the two after it one between them.
    assert len(checkouts) <= 2, len(checkouts)
    with SqlUnitOfWork(engine, SqlAuditLog(engine, SystemClock()), group=False).atomic():
        store.revoke_jti("jti-5", expires_at=now + 600, now=now)
        assert store.is_revoked("jti-5")  # inside the unit: its own change, on its connection
    assert store.is_revoked("jti-5")
