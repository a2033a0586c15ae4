"""Reads on the hottest paths as plain driver queries on a pooled connection.

Building, caching and running a statement through SQLAlchemy Core costs several times the
query itself for a lookup by primary key (cProfile: ~70 % of an introspection was the client
throttle's counter read). These helpers run fixed SQL text straight on the DB-API cursor;
inside a unit of work they use its connection instead, so the read sees its own changes. The
driver's errors are left to the caller's `storage_boundary` to translate.

On a SQLite file, even the pool's checkout and check-in around one indexed read (its queue,
engine events, the reset on return) cost about twice the read itself, and the throttle reads
before every client authentication. `_HeldReaders` keeps a few connections checked out of the
engine's pool for these lone reads: still the pool's connections (opened with its pragmas,
counted as in use), taken and given back by a list pop and append. A read outside a
transaction sees everything committed before it (WAL: each statement takes a fresh snapshot),
exactly as it did on a connection just checked out.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import PoolProxiedConnection, QueuePool

from idhub.adapters.unit_of_work import open_unit

# Connections kept for lone reads per engine: the threads that read at once on a busy worker
# (the event loop for introspection, the token endpoint's two batches); any further reader
# borrows from the pool as before and gives its connection back to it.
HELD_READERS = 4


def placeholder(engine: Engine) -> str:
    """The driver's parameter mark: `%s` for psycopg, `?` for sqlite3."""
    return "%s" if engine.dialect.name == "postgresql" else "?"


def fetch_all(engine: Engine, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    unit = open_unit(engine)
    if unit is not None:
        return [tuple(row) for row in unit.conn.exec_driver_sql(sql, tuple(params))]
    held = _held_readers(engine)
    if held is not None:
        return held.fetch_all(engine, sql, params)
    connection = engine.raw_connection()
    driver = connection.driver_connection
    # psycopg opens a transaction for the first statement, so a lone read would be three round
    # trips (BEGIN, the SELECT, and the pool's ROLLBACK on return); in autocommit it is the
    # SELECT alone, and a single statement sees one snapshot either way. The connection is
    # idle here (the pool hands out none in a transaction), which the switch requires.
    autocommit = engine.dialect.name == "postgresql" and driver is not None
    try:
        if autocommit:
            driver.autocommit = True  # type: ignore[union-attr]
        cursor = connection.cursor()
        cursor.execute(sql, tuple(params))
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.close()
        if autocommit:
            driver.autocommit = False  # type: ignore[union-attr]
    except BaseException:
        # A failed round trip leaves the connection in an unknown state: never pool it.
        connection.invalidate()
        raise
    finally:
        connection.close()
    return rows


class _HeldReaders:
    """Up to `HELD_READERS` pooled connections of one SQLite engine, kept for lone reads."""

    # No reference to the engine: the finalizer that closes these must not keep it alive.
    def __init__(self) -> None:
        self._idle: list[PoolProxiedConnection] = []
        # Bumped by `engine.dispose()`: a connection of the old pool is closed, not kept.
        self._generation = 0

    def fetch_all(self, engine: Engine, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        generation = self._generation
        try:
            connection = self._idle.pop()  # atomic: no lock needed between threads
        except IndexError:
            connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(sql, tuple(params))
            rows = [tuple(row) for row in cursor.fetchall()]
            cursor.close()
        except BaseException:
            # Whatever failed, this connection is not trusted again.
            connection.invalidate()
            connection.close()
            raise
        driver: Any = connection.driver_connection
        if (
            generation == self._generation
            and len(self._idle) < HELD_READERS
            and driver is not None
            and not driver.in_transaction
        ):
            self._idle.append(connection)
        else:
            connection.close()  # back to the pool (or closed, after a dispose)
        return rows

    def close(self) -> None:
        self._generation += 1
        while self._idle:
            try:
                connection = self._idle.pop()
            except IndexError:
                break
            # Really closed: a connection given back to a disposed pool would stay open there.
            connection.invalidate()
            connection.close()


_readers: weakref.WeakKeyDictionary[Engine, _HeldReaders | None] = weakref.WeakKeyDictionary()
_readers_lock = threading.Lock()


def can_hold_connections(engine: Engine) -> bool:
    """Whether connections of `engine` may be kept out of its pool between uses (these held
    readers, the audit log's held writer): a SQLite file behind a `QueuePool`. A `:memory:`
    database is a different database on every connection, and other pools are cheap or
    single-connection already."""
    database = engine.url.database or ""
    return (
        engine.dialect.name == "sqlite"
        and isinstance(engine.pool, QueuePool)
        and database not in ("", ":memory:")
        and "mode=memory" not in database
    )


def _held_readers(engine: Engine) -> _HeldReaders | None:
    """The engine's held readers, where `can_hold_connections`."""
    try:
        return _readers[engine]
    except KeyError:
        pass
    with _readers_lock:
        if engine in _readers:
            return _readers[engine]
        readers = None
        if can_hold_connections(engine):
            readers = _HeldReaders()
            event.listen(engine, "engine_disposed", lambda _engine: readers.close())
            # An engine dropped without `dispose()`: give its held connections back first.
            weakref.finalize(engine, readers.close)
        _readers[engine] = readers
        return readers
