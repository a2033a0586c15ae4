"""Lone reads of a SQLite file that never wait: one read-only connection per thread.

On a SQLite file in WAL mode a read neither waits for writers nor takes long, and for a lookup
by primary key the query itself is a small part of what a read through the engine costs: the
pooled connection, SQLAlchemy's cursor wrapper and the driver-read helpers around it were
~46,000 instructions per throttle read, against ~9,000 for the same `SELECT` on a plain
`sqlite3` connection (callgrind, docs/performance.md). `ReadOnlySqlite` keeps such a
connection per thread: opened read-only (`mode=ro`), in autocommit (`isolation_level=None`:
every statement is its own read transaction, so it sees every transaction committed before
it, exactly as a connection just checked out of the pool would; it is not a cache) and with a
zero busy timeout. When the file cannot be read at once (locked by a recovery or a truncating
checkpoint, or anything else failing) it answers None and drops the connection; the caller
then reads the usual way, which waits as configured and translates errors as every store does.

Only for reads outside a unit of work: inside one, the unit's own connection must be asked,
since only it sees the unit's uncommitted changes (the callers check `open_unit`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine


class ReadOnlySqlite:
    """Per-thread read-only autocommit connections to the SQLite file at `path`."""

    def __init__(self, path: Path) -> None:
        self._uri = f"file:{quote(str(path))}?mode=ro"
        self._local = threading.local()

    def fetch_all(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows of `sql`, or None when the file cannot be read without waiting now."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        try:
            if connection is None:
                connection = sqlite3.connect(self._uri, uri=True, timeout=0, isolation_level=None)
                self._local.connection = connection
            return connection.execute(sql, params).fetchall()
        except sqlite3.Error:
            self._local.connection = None
            if connection is not None:
                connection.close()
            return None


def readonly_sqlite(engine: Engine) -> ReadOnlySqlite | None:
    """The reader for a file-backed SQLite engine; None for anything else (PostgreSQL, where
    every read is a network round trip anyway; an in-memory database, which another
    connection would not see)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return ReadOnlySqlite(Path(database))
