"""Pooled connections kept out of an engine's pool for lone reads (adapters/driver_read.py):
taken and given back by a list pop and append instead of the pool's checkout and check-in.
The PostgreSQL variant, which also checks each one before use, is in
adapters/pg_held_readers.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

# Connections kept for lone reads per engine: the threads that read at once on a busy worker
# (the event loop for introspection, the token endpoint's two batches); any further reader
# borrows from the pool as before and gives its connection back to it.
HELD_READERS = 4


def run_read(connection: PoolProxiedConnection, sql: str, params: Sequence[Any]) -> list[Any]:
    cursor = connection.cursor()
    cursor.execute(sql, tuple(params))
    rows = [tuple(row) for row in cursor.fetchall()]
    cursor.close()
    return rows


class HeldReaders:
    """Up to `limit` pooled connections of one engine, kept for lone reads (a SQLite file;
    PostgreSQL in adapters/pg_held_readers.py)."""

    # No reference to the engine: the finalizer that closes these must not keep it alive.
    def __init__(self, limit: int = HELD_READERS) -> None:
        self._idle: list[PoolProxiedConnection] = []
        self._limit = limit
        # Bumped by `engine.dispose()`: a connection of the old pool is closed, not kept.
        self._generation = 0

    def fetch_all(self, engine: Engine, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        generation = self._generation
        connection = self._take(engine)
        try:
            rows = run_read(connection, sql, params)
        except BaseException:
            # Whatever failed, this connection is not trusted again.
            connection.invalidate()
            connection.close()
            raise
        driver: Any = connection.driver_connection
        if (
            generation == self._generation
            and len(self._idle) < self._limit
            and driver is not None
            and self._idle_now(driver)
        ):
            self._idle.append(connection)
        else:
            self._unhold(connection)
            connection.close()  # back to the pool (or closed, after a dispose)
        return rows

    def _take(self, engine: Engine) -> PoolProxiedConnection:
        try:
            return self._idle.pop()  # atomic: no lock needed between threads
        except IndexError:
            return engine.raw_connection()

    def _idle_now(self, driver: Any) -> bool:
        """Whether the connection is outside a transaction after the read, fit to keep."""
        return not driver.in_transaction

    def _unhold(self, connection: PoolProxiedConnection) -> None:
        """Puts back what the pool gave out, before the connection returns to it."""

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
