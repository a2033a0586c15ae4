"""The standalone append on SQLite, on the pooled sqlite3 connection itself.

The same transaction as before - take the database write lock, read the chain tail, insert,
commit - but as four driver calls instead of three statements and a commit through
SQLAlchemy's `Connection`, whose per-statement bookkeeping (execution context, result
object, cursor wrapping) cost more CPU than SQLite spent on the work itself (cProfile, one
token's event: ~60 % of the append). `BEGIN IMMEDIATE` takes the write lock before the tail
is read, exactly what the no-op `UPDATE` did inside SQLAlchemy's implicit transaction, so a
writer in another process cannot slip in between the read and the insert; SQLite's busy
timeout still bounds the wait. The commit returns only once the event is in the WAL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from idhub.adapters.audit_pg_append import chain_rows
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
