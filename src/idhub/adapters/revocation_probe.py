"""A look at the revocation list that never waits, for the decision API's event loop.

On SQLite the revocation list is a table in a local file, and a read in WAL mode neither waits
for writers nor takes long (a primary-key lookup, a few microseconds): the same query a worker
thread would run (`SqlTokenStore.is_revoked`) can be asked on the event loop, saving the
thread hop that cost more than the rest of a single decision. The probe reads through its own
read-only connection per thread with a zero busy timeout and no pool; if the file is locked
(a checkpoint, a recovery) or anything else fails, it answers None and the caller asks the
store in a worker thread as before. Each call is its own autocommit read, so it sees every
revocation committed before it, exactly as the store's query would: it is not a cache.

PostgreSQL is a network round trip: no probe (`revocation_probe` returns None), the thread
path stays.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine

_QUERY = "SELECT 1 FROM revoked_tokens WHERE jti = ?"

Probe = Callable[[str], "bool | None"]


class SqliteRevocationProbe:
    def __init__(self, path: Path) -> None:
        self._uri = f"file:{quote(str(path))}?mode=ro"
        self._local = threading.local()

    def __call__(self, jti: str) -> bool | None:
        """Whether `jti` is on the revocation list, or None when that cannot be read now."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        try:
            if connection is None:
                # isolation_level None: every SELECT is its own read transaction.
                connection = sqlite3.connect(self._uri, uri=True, timeout=0, isolation_level=None)
                self._local.connection = connection
            found = connection.execute(_QUERY, (jti,)).fetchone()
        except sqlite3.Error:
            self._local.connection = None
            if connection is not None:
                connection.close()
            return None
        return found is not None


def revocation_probe(engine: Engine) -> Probe | None:
    """The probe for a file-backed SQLite database; None for anything else."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return SqliteRevocationProbe(Path(database))
