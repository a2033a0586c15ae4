"""The PostgreSQL pool: a checkout sends nothing to the server, a burst of concurrent requests
does not open and close backend connections over and over, and a pooled connection whose
session the server ended is replaced on checkout instead of failing the request."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from idhub.adapters.database import create_db_engine
from idhub.config import DatabaseSettings, Settings


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    engine = create_db_engine(DatabaseSettings(url=pg_database))
    yield engine
    engine.dispose()


def test_a_checkout_sends_nothing_to_the_server(pg_engine: Engine) -> None:
    with pg_engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # opened, used, back in the pool
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "libpq.trace"
        with open(trace, "w", encoding="utf-8") as out:
            pooled = pg_engine.raw_connection()
            try:
                driver = pooled.driver_connection
                pgconn = driver.pgconn  # type: ignore[union-attr]
                pgconn.trace(out.fileno())
                pooled.close()  # back to the pool: nothing to reset, it is idle
                again = pg_engine.raw_connection()  # the same connection, checked out again
                assert again.driver_connection is driver
                again.close()
                pgconn.untrace()
            finally:
                out.flush()
                os.fsync(out.fileno())
        # libpq's trace: one line per protocol message, "F" from the client, "B" from the
        # server. A pre-ping would be an (empty) Query and its answer.
        sent = [line for line in trace.read_text().splitlines() if "\tF\t" in line]
        assert sent == []


def _backend_pids(engine: Engine, threads: int, rounds: int) -> list[int]:
    """`rounds` bursts of `threads` concurrent readers, each holding its connection for a
    moment; the server process that answered each read."""
    pids: list[int] = []
    lock = threading.Lock()

    def read(start: threading.Barrier) -> None:
        start.wait()
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.05)")).scalar()
        with lock:
            pids.append(int(pid))  # type: ignore[arg-type]

    for _ in range(rounds):
        start = threading.Barrier(threads)
        workers = [threading.Thread(target=read, args=(start,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        time.sleep(0.1)  # a quiet moment between bursts: the pool takes its connections back
    return pids


def test_bursts_of_concurrent_requests_reuse_the_pools_connections(pg_engine: Engine) -> None:
    # 20 at once: what one of two workers sees under 32 connections (bench_oidc), more than
    # the 10 connections the pool used to keep (it opened 10 more per burst and closed them).
    pids = _backend_pids(pg_engine, threads=20, rounds=5)
    assert len(pids) == 100
    # Every burst is served by connections the pool kept: at most 20 backends ever started.
    assert len(set(pids)) <= 20, f"{len(set(pids))} backends for {len(pids)} reads"


def test_overflow_connections_are_closed_when_they_come_back(pg_database: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=pg_database, pool_size=2, pool_overflow=4))
    try:
        pids = _backend_pids(engine, threads=6, rounds=3)
        # Two kept; the four opened for each burst are closed after it, so new ones follow.
        assert len(set(pids)) > 6
        assert engine.pool.checkedin() == 2  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_a_pooled_connection_the_server_ended_is_replaced_on_checkout(
    pg_engine: Engine, pg_database: str
) -> None:
    with pg_engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    finally:
        admin.dispose()
    time.sleep(0.2)  # the server's FATAL message and end of file reach the socket
    with pg_engine.connect() as conn:
        # No error: the checkout found the session over and opened another connection.
        second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    assert second != first


def test_the_pool_settings_are_read_from_the_file(
    make_settings: Callable[..., Settings], sqlite_db_url: str
) -> None:
    settings = make_settings(sqlite_db_url, toml="[database]\npool_size = 7\npool_overflow = 3\n")
    assert (settings.database.pool_size, settings.database.pool_overflow) == (7, 3)
    assert (DatabaseSettings().pool_size, DatabaseSettings().pool_overflow) == (20, 0)


def test_a_hot_read_outside_a_unit_is_one_round_trip(pg_engine: Engine) -> None:
    from idhub.adapters.driver_read import _held_readers, fetch_all

    assert fetch_all(pg_engine, "SELECT %s::int + 1", [1]) == [(2,)]  # now held for the next
    readers = _held_readers(pg_engine)
    assert readers is not None
    (held,) = readers._idle
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "libpq.trace"
        with open(trace, "w", encoding="utf-8") as out:
            pgconn = held.driver_connection.pgconn  # type: ignore[union-attr]
            pgconn.trace(out.fileno())
            try:
                assert fetch_all(pg_engine, "SELECT %s::int + 1", [41]) == [(42,)]
            finally:
                pgconn.untrace()
                out.flush()
                os.fsync(out.fileno())
        sent = [line for line in trace.read_text().splitlines() if "\tF\t" in line]
    # No BEGIN before it and no ROLLBACK after it: only the statement's own messages.
    assert not any("BEGIN" in line or "ROLLBACK" in line for line in sent), sent
    assert any("SELECT" in line for line in sent), sent


def test_a_lone_read_gives_back_to_the_pool_a_connection_in_its_usual_mode(
    pg_database: str,
) -> None:
    from idhub.adapters.driver_read import fetch_all

    # A pool of 4 spares one held reader; of two reads at once, one connection goes back.
    engine = create_db_engine(DatabaseSettings(url=pg_database, pool_size=4))
    try:
        together = threading.Barrier(2, timeout=10)

        def read(_i: int) -> list[tuple[object, ...]]:
            together.wait()
            return fetch_all(engine, "SELECT 1 FROM pg_sleep(0.2)", [])

        with ThreadPoolExecutor(2) as pool:
            assert list(pool.map(read, range(2))) == [[(1,)], [(1,)]]
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        with engine.connect() as conn:
            # Back in the pool in its usual mode: the next transaction opens as before.
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
    finally:
        engine.dispose()
