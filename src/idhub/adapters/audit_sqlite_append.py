"""The standalone append on SQLite, on a sqlite3 connection of the pool held for it.

The same transaction as before - take the database write lock, read the chain tail, insert,
commit - but as four driver calls instead of three statements and a commit through
SQLAlchemy's `Connection`, whose per-statement bookkeeping (execution context, result
object, cursor wrapping) cost more CPU than SQLite spent on the work itself (cProfile, one
token's event: ~60 % of the append). `BEGIN IMMEDIATE` takes the write lock before the tail
is read, exactly what the no-op `UPDATE` did inside SQLAlchemy's implicit transaction, so a
writer in another process cannot slip in between the read and the insert; SQLite's busy
timeout still bounds the wait. The commit returns only once the event is in the WAL.

`HeldWriter` keeps one of the engine's pooled connections checked out for these appends.
Checking a connection out of the pool and back in around each append (the queue, the engine
events, the reset on return) cost more CPU than the append's four driver calls themselves:
~30-40 µs against ~30 µs for a one-event batch, measured on a SQLite file. It is still the
pool's connection (opened with its pragmas, counted as in use); only one append uses it at a
time (the log's group-commit leader, inside the writers' turn); it is left idle between
appends with no transaction open, so it holds no lock and no snapshot; after any failure it
is dropped for good, and the next append takes a fresh one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine

from idhub.adapters.audit_pg_append import chain_rows
from idhub.adapters.held_connection import HeldConnection
from idhub.core.audit_chain import GENESIS_HASH

_BEGIN = "BEGIN IMMEDIATE"
_TAIL = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
_ANCHOR = "SELECT first_seq, prev_hash FROM audit_anchor ORDER BY id LIMIT 1"


def sqlite_tail(cursor: Any) -> tuple[int, str]:
    """(next seq, previous hash) read on a cursor whose transaction holds the write lock."""
    last = cursor.execute(_TAIL).fetchone()
    if last is not None:
        return int(last[0]) + 1, str(last[1])
    anchor = cursor.execute(_ANCHOR).fetchone()
    return (int(anchor[0]), str(anchor[1])) if anchor is not None else (1, GENESIS_HASH)


def sqlite_append(raw: Any, insert_sql: str, events: Sequence[Any]) -> tuple[int, str]:
    """Appends prepared events on sqlite3 connection `raw` (no transaction open) and commits;
    rolls back and re-raises on any failure. Returns the (seq, hash) appended last."""
    cursor = raw.cursor()
    try:
        cursor.execute(_BEGIN)
        seq, prev = sqlite_tail(cursor)
        rows = chain_rows(events, seq, prev)
        if len(rows) == 1:
            cursor.execute(insert_sql, rows[0])
        else:
            cursor.executemany(insert_sql, rows)
        raw.commit()
    except BaseException:
        if raw.in_transaction:
            raw.rollback()
        raise
    finally:
        cursor.close()
    return rows[-1][0], rows[-1][-1]


class HeldWriter(HeldConnection):
    """The held connection (adapters/held_connection.py) of a SQLite file's engine."""

    def append(self, engine: Engine, insert_sql: str, events: Sequence[Any]) -> tuple[int, str]:
        """`sqlite_append` on the held connection (taken from the pool when none is held)."""
        # Through a `Connection`, so engine events (the tests' tracker of every database a
        # test wrote) see the append's database; no statement goes through it.
        connection, generation = self.take(engine.connect)
        try:
            last = sqlite_append(connection.connection.driver_connection, insert_sql, events)
        except BaseException:
            # Whatever failed (a blink, a full disk, a renamed table), this connection is not
            # trusted again: the next append starts on a fresh one.
            self.discard(connection)
            raise
        self.keep(connection, generation)
        return last
