"""The PostgreSQL append path, built for the fewest round trips.

Every append holds the advisory lock (`pg_advisory_xact_lock`) from before the tail is known
until COMMIT, so concurrent writers still form one chain. Within that rule:

- Fast path (one round trip): the writer remembers the tail it wrote last. BEGIN, the lock,
  an INSERT guarded by "the tail is still (seq, hash) and nothing follows it", and COMMIT go
  out as one psycopg pipeline. The guard is evaluated after the lock is held (a separate
  statement, so a fresh READ COMMITTED snapshot), so it sees every committed append.
- If another process appended meanwhile, the guarded INSERT inserts nothing and the
  transaction commits empty; the slow path then reads the tail under the lock and inserts
  (two more round trips). The `seq` primary key stays the last guard against a fork.

Each round trip wakes the database server and then this process again, which on a busy
machine costs more than the work; the commit's fsync stays, durability is the point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from idhub.core.audit_chain import GENESIS_HASH, canonical_bytes, chain_hash

ADVISORY_LOCK_KEY = 0x1D4B_A0D1
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_TAIL = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
_ANCHOR = "SELECT first_seq, prev_hash FROM audit_anchor ORDER BY id LIMIT 1"
_FAST_MAX = 200
_ROW = "(%s::bigint, %s::double precision" + ", %s" * 11 + ")"


def chain_rows(events: Sequence[Any], seq: int, prev: str) -> list[tuple[Any, ...]]:
    """Places prepared events (`.values`, `.tail`) after (seq - 1, prev) in the chain."""
    rows = []
    for event in events:
        digest = chain_hash(prev, canonical_bytes(seq, event.tail))
        rows.append((seq, *event.values, prev, digest))
        seq, prev = seq + 1, digest
    return rows


def lock_and_read_tail(raw: Any) -> tuple[int, str] | None:
    """Takes the append lock inside the transaction open on psycopg connection `raw` and
    reads the tail, in one round trip: the tail query starts (and takes its READ COMMITTED
    snapshot) only once the lock is held, so it sees every committed append. None for an
    empty table."""
    with raw.pipeline() as pipeline, raw.cursor() as lock, raw.cursor() as tail:
        lock.execute(_LOCK, (ADVISORY_LOCK_KEY,))
        tail.execute(_TAIL)
        pipeline.sync()
        last = tail.fetchone()
    return (int(last[0]), str(last[1])) if last is not None else None


class PgAppender:
    def __init__(self, columns: Sequence[str]) -> None:
        self._columns = ", ".join(columns)
        self._insert = f"INSERT INTO audit_events ({self._columns}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608, E501 - constants only
        # (last seq, last hash) this process wrote: set by the group-commit leader and by
        # committed units of work; a hint only, the guarded INSERT checks it.
        self._tail: tuple[int, str] | None = None

    def forget(self) -> None:
        self._tail = None

    def remember(self, tail: tuple[int, str]) -> None:
        # From a unit of work's commit: only a hint for the fast path, never trusted blindly.
        self._tail = tail

    def append(self, raw: Any, events: Sequence[Any]) -> None:
        """Appends on a psycopg connection with no transaction open; commits."""
        try:
            # One statement carries every value as a parameter (PostgreSQL allows 65,535),
            # so big batches take the executemany path.
            tail = self._tail
            if tail is not None and len(events) <= _FAST_MAX and self._fast(raw, events, *tail):
                return
            self._slow(raw, events)
        except BaseException:
            self._tail = None
            raise

    def _fast(self, raw: Any, events: Sequence[Any], last_seq: int, last_hash: str) -> bool:
        rows = chain_rows(events, last_seq + 1, last_hash)
        values = ", ".join([_ROW] * len(rows))
        guarded = (
            f"INSERT INTO audit_events ({self._columns}) SELECT * FROM (VALUES {values}) AS v "  # noqa: S608 - constants only
            "WHERE EXISTS (SELECT 1 FROM audit_events WHERE seq = %s AND hash = %s) "
            "AND NOT EXISTS (SELECT 1 FROM audit_events WHERE seq > %s)"
        )
        params = [value for row in rows for value in row] + [last_seq, last_hash, last_seq]
        with raw.pipeline():
            lock, insert = raw.cursor(), raw.cursor()
            lock.execute(_LOCK, (ADVISORY_LOCK_KEY,))
            insert.execute(guarded, params)
            raw.commit()
        if insert.rowcount != len(rows):
            return False
        self._tail = (rows[-1][0], rows[-1][-1])
        return True

    def _slow(self, raw: Any, events: Sequence[Any]) -> None:
        with raw.pipeline() as pipeline:
            lock, tail = raw.cursor(), raw.cursor()
            lock.execute(_LOCK, (ADVISORY_LOCK_KEY,))
            tail.execute(_TAIL)
            pipeline.sync()
            last = tail.fetchone()
            if last is not None:
                seq, prev = int(last[0]) + 1, str(last[1])
            else:
                tail.execute(_ANCHOR)
                pipeline.sync()
                anchor = tail.fetchone()
                seq, prev = (int(anchor[0]), str(anchor[1])) if anchor else (1, GENESIS_HASH)
            rows = chain_rows(events, seq, prev)
            lock.executemany(self._insert, rows)
            raw.commit()
        self._tail = (rows[-1][0], rows[-1][-1])
