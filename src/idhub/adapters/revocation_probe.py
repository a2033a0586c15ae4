"""A look at the revocation list that never waits, for the decision API's event loop.

On SQLite the revocation list is a table in a local file, and a read in WAL mode neither waits
for writers nor takes long (a primary-key lookup, a few microseconds): the same query a worker
thread would run (`SqlTokenStore.is_revoked`) can be asked on the event loop, saving the
thread hop that cost more than the rest of a single decision. The probe reads through its own
read-only connection per thread with a zero busy timeout and no pool
(adapters/sqlite_readonly.py); if the file is locked (a checkpoint, a recovery) or anything
else fails, it answers None and the caller asks the store in a worker thread as before. Each
call is its own autocommit read, so it sees every revocation committed before it, exactly as
the store's query would: it is not a cache.

PostgreSQL is a network round trip: no probe (`revocation_probe` returns None), the thread
path stays.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from idhub.adapters.sqlite_readonly import ReadOnlySqlite, readonly_sqlite

_QUERY = "SELECT 1 FROM revoked_tokens WHERE jti = ?"

Probe = Callable[[str], "bool | None"]


class SqliteRevocationProbe:
    def __init__(self, reader: ReadOnlySqlite) -> None:
        self._reader = reader

    def __call__(self, jti: str) -> bool | None:
        """Whether `jti` is on the revocation list, or None when that cannot be read now."""
        found = self._reader.fetch_all(_QUERY, (jti,))
        return None if found is None else bool(found)


def revocation_probe(engine: Engine) -> Probe | None:
    """The probe for a file-backed SQLite database; None for anything else."""
    reader = readonly_sqlite(engine)
    return None if reader is None else SqliteRevocationProbe(reader)
