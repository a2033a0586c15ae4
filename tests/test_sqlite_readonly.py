"""The throttle's counter read through a plain read-only SQLite connection
(adapters/sqlite_readonly.py): it must see every commit of another connection at once, never
an uncommitted change of another, the unit of work's own changes inside one, and fall back to
the pooled read (and its errors) when the file cannot be read that way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import create_db_engine
from idhub.adapters.db import throttle_counters
from idhub.adapters.sqlite_readonly import ReadOnlySqlite, readonly_sqlite
from idhub.adapters.throttle_store import SqlThrottleStore
from idhub.adapters.unit_of_work import SqlUnitOfWork, begin
from idhub.config import DatabaseSettings
from idhub.core.clock import SystemClock
from idhub.core.throttle import CLIENT, CLIENT_IP, ThrottleKey
from idhub.errors import StorageError

KEYS = (ThrottleKey(CLIENT_IP, "192.0.2.7"), ThrottleKey(CLIENT, "rs@192.0.2.7"))


@pytest.fixture
def engine(sqlite_db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(DatabaseSettings(url=sqlite_db_url))
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> SqlThrottleStore:
    reader = readonly_sqlite(engine)
    assert reader is not None
    return SqlThrottleStore(engine, readonly=reader)


def _insert(engine: Engine, key: ThrottleKey, failures: int) -> None:
    with begin(engine) as conn:  # joins an open unit of work
        conn.execute(
            throttle_counters.insert().values(
                kind=key.kind,
                value=key.value,
                failures=failures,
                first_failed_at=1.0,
                last_failed_at=2.0,
            )
        )


def _failures(store: SqlThrottleStore) -> list[tuple[str, int]]:
    return [(c.kind, c.failures) for c in store.counters(KEYS)]


def test_the_read_sees_another_connections_commits_at_once(
    store: SqlThrottleStore, sqlite_db_url: str
) -> None:
    assert _failures(store) == []  # the reader's connection is open from here on
    other = create_db_engine(DatabaseSettings(url=sqlite_db_url))  # another worker, in effect
    try:
        _insert(other, KEYS[1], 3)
        assert _failures(store) == [(CLIENT, 3)]
        with other.begin() as conn:
            conn.exec_driver_sql("UPDATE throttle_counters SET failures = 9, locked_until = 5.0")
        (counter,) = store.counters(KEYS)
        assert (counter.failures, counter.locked_until, counter.last_failed_at) == (9, 5.0, 2.0)
        _insert(other, KEYS[0], 1)
        assert sorted(_failures(store)) == [(CLIENT, 9), (CLIENT_IP, 1)]
        with other.begin() as conn:
            conn.exec_driver_sql("DELETE FROM throttle_counters")
        assert _failures(store) == []
    finally:
        other.dispose()


def test_the_read_does_not_wait_for_a_writer_nor_see_its_uncommitted_change(
    store: SqlThrottleStore, engine: Engine
) -> None:
    _insert(engine, KEYS[0], 1)
    with engine.connect() as writer:
        writer.exec_driver_sql("BEGIN IMMEDIATE")  # holds the write lock
        writer.exec_driver_sql(
            "INSERT INTO throttle_counters (kind, value, failures, first_failed_at,"
            " last_failed_at) VALUES (?, ?, 4, 1.0, 2.0)",
            (KEYS[1].kind, KEYS[1].value),
        )
        assert _failures(store) == [(CLIENT_IP, 1)]
        writer.exec_driver_sql("COMMIT")
    assert sorted(_failures(store)) == [(CLIENT, 4), (CLIENT_IP, 1)]


class _Undo(Exception):
    pass


def test_inside_a_unit_of_work_the_read_sees_the_units_own_changes(
    store: SqlThrottleStore, engine: Engine
) -> None:
    units = SqlUnitOfWork(engine, SqlAuditLog(engine, SystemClock()), group=False)
    with pytest.raises(_Undo), units.atomic():
        _insert(engine, KEYS[1], 2)  # uncommitted: only the unit's connection has it
        assert _failures(store) == [(CLIENT, 2)]
        raise _Undo
    assert _failures(store) == []


def test_a_file_it_cannot_read_falls_back_to_the_pooled_read_and_its_errors(
    store: SqlThrottleStore, engine: Engine
) -> None:
    assert _failures(store) == []
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE throttle_counters RENAME TO gone")
    with pytest.raises(StorageError):  # what the pooled read raises, translated as before
        store.counters(KEYS)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE gone RENAME TO throttle_counters")
    _insert(engine, KEYS[1], 1)
    assert _failures(store) == [(CLIENT, 1)]  # a fresh read-only connection again


def test_the_reader_answers_none_and_reconnects_after_a_failure(engine: Engine) -> None:
    reader = readonly_sqlite(engine)
    assert reader is not None
    assert reader.fetch_all("SELECT count(*) FROM throttle_counters", ()) == [(0,)]
    assert reader.fetch_all("SELECT * FROM no_such_table", ()) is None
    assert reader.fetch_all("SELECT count(*) FROM throttle_counters", ()) == [(0,)]


def test_the_reader_cannot_write(engine: Engine) -> None:
    reader = readonly_sqlite(engine)
    assert isinstance(reader, ReadOnlySqlite)
    assert reader.fetch_all("DELETE FROM throttle_counters", ()) is None


def test_only_a_sqlite_file_gets_a_reader() -> None:
    memory = create_db_engine(DatabaseSettings(url="sqlite:///:memory:"))
    postgres = create_db_engine(DatabaseSettings(url="postgresql+psycopg://u@127.0.0.1:1/x"))
    try:
        assert readonly_sqlite(memory) is None
        assert readonly_sqlite(postgres) is None
    finally:
        memory.dispose()
        postgres.dispose()
