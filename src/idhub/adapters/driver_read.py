"""Reads on the hottest paths as plain driver queries on a pooled connection.

Building, caching and running a statement through SQLAlchemy Core costs several times the
query itself for a lookup by primary key (cProfile: ~70 % of an introspection was the client
throttle's counter read). These helpers run fixed SQL text straight on the DB-API cursor;
inside a unit of work they use its connection instead, so the read sees its own changes. The
driver's errors are left to the caller's `storage_boundary` to translate.

On a SQLite file, even the pool's checkout and check-in around one indexed read (its queue,
engine events, the reset on return) cost about twice the read itself, and the throttle reads
before every client authentication. `HeldReaders` (adapters/held_readers.py) keeps a few
connections checked out of the engine's pool for these lone reads: still the pool's
connections (opened with its pragmas, counted as in use), taken and given back by a list pop
and append. A read outside a transaction sees everything committed before it (WAL: each
statement takes a fresh snapshot), exactly as it did on a connection just checked out. On
PostgreSQL the same, in autocommit, with the pool checkout's checks made before each use
(adapters/pg_held_readers.py).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import QueuePool

from idhub.adapters.held_readers import HELD_READERS, HeldReaders, run_read
from idhub.adapters.unit_of_work import open_unit

__all__ = ["HELD_READERS", "can_hold_connections", "fetch_all", "placeholder"]


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
        rows = run_read(connection, sql, params)
        if autocommit:
            driver.autocommit = False  # type: ignore[union-attr]
    except BaseException:
        # A failed round trip leaves the connection in an unknown state: never pool it.
        connection.invalidate()
        raise
    finally:
        connection.close()
    return rows


_readers: weakref.WeakKeyDictionary[Engine, HeldReaders | None] = weakref.WeakKeyDictionary()
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


def _held_readers(engine: Engine) -> HeldReaders | None:
    """The engine's held readers, where `can_hold_connections` (a SQLite file) or on
    PostgreSQL (adapters/pg_held_readers.py)."""
    try:
        return _readers[engine]
    except KeyError:
        pass
    with _readers_lock:
        if engine in _readers:
            return _readers[engine]
        readers: HeldReaders | None = None
        if can_hold_connections(engine):
            readers = HeldReaders()
        elif engine.dialect.name == "postgresql":
            # Imported here: it loads psycopg, which a SQLite worker never needs.
            from idhub.adapters.pg_held_readers import held_pg_readers

            readers = held_pg_readers(engine)
        if readers is not None:
            closing = readers
            event.listen(engine, "engine_disposed", lambda _engine: closing.close())
            # An engine dropped without `dispose()`: give its held connections back first.
            weakref.finalize(engine, closing.close)
        _readers[engine] = readers
        return readers
