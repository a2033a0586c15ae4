"""The PostgreSQL append path: the chain lock, then the batch, two round trips per batch.

Every append holds the advisory lock (`pg_advisory_xact_lock`) from before the tail is known
until its commit is flushed, so concurrent writers - threads, worker processes, replicas -
still form one chain. A process's group-commit leader (adapters/audit_store.py
`_lead_locked`) keeps one connection (`HeldAppender`) and on it first takes the lock (`BEGIN;
SELECT pg_advisory_xact_lock(...)`, `lock_chain`), and only once it holds it collects the
queue as its batch and sends it with its COMMIT (`idhub_audit_append(...); COMMIT`,
`append_locked`; migrations 0019, 0020): the function reads the tail, links and inserts the
batch behind it, and psycopg returns only after COMMIT's answer (an error raised at commit
reaches the caller), so nothing is answered before its event is durable. The canonical form
of each event is still built in Python, outside the lock, and each caller encodes its own
events as JSON before it queues; the server only adds `[seq,` in front and hashes
(docs/audit.md).

Why the lock comes first: with the batch fixed before the lock wait (0019 and 0020 as first
used, one autocommit statement), everything that queued while another process held the lock
- its whole turn, flush included - waited for a turn of its own, so two workers made
half-size batches and twice the flushes (docs/performance.md, branch `pgflush`). And a
lock wait interrupted on the client left its statement queued on the server, where it was
committed once the lock came free although its caller had been told it failed; now the
batch is only sent once the lock is held.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from psycopg import pq
from sqlalchemy import Connection, Engine

from idhub.adapters._pg_deadline import session_ended, stall_guard
from idhub.adapters.held_connection import HeldConnection
from idhub.core.audit_chain import canonical_bytes, chain_hash

ADVISORY_LOCK_KEY = 0x1D4B_A0D1
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_TAIL = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
# The batch travels as one JSON text (migration 0019 reads it back): psycopg dumps a list
# parameter in Python, element by element (eleven arrays cost ~300 µs of CPU per append,
# measured), while the C JSON encoder writes the whole batch in a few.
_APPEND = "SELECT last_seq, last_hash FROM idhub_audit_append(%s::json)"
_BATCH = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


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
    empty table. For units of work, whose events commit with their own changes."""
    with raw.pipeline() as pipeline, raw.cursor() as lock, raw.cursor() as tail:
        lock.execute(_LOCK, (ADVISORY_LOCK_KEY,))
        tail.execute(_TAIL)
        pipeline.sync()
        last = tail.fetchone()
    return (int(last[0]), str(last[1])) if last is not None else None


# One simple-query message each (several statements, no parameters: PostgreSQL's simple
# protocol runs them in order and stops at the first error), so taking the lock is one round
# trip and the append with its COMMIT another. psycopg's pipeline mode took five for the same.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})".encode()
_APPEND_HEAD = b"SELECT last_seq, last_hash FROM idhub_audit_append("
_APPEND_TAIL = b"::json); COMMIT"


def lock_chain(raw: Any) -> None:
    """Opens a transaction on psycopg connection `raw` (idle, in autocommit, so psycopg sends
    no BEGIN of its own) and returns once it holds the chain lock, in one round trip. The
    lock is held until that transaction ends (`append_locked` commits it)."""
    with raw.cursor() as cursor:
        cursor.execute(_BEGIN_LOCKED, prepare=False)


def batch_part(events: Sequence[Any]) -> str:
    """Prepared events (`.values`, `.tail`) as their part of the function's JSON array (the
    elements, without the brackets). Each caller encodes its own before it queues, so the
    leader, holding the chain lock, only joins the parts."""
    return _BATCH.encode([[*event.values, event.tail] for event in events])[1:-1]


def append_locked(raw: Any, parts: Sequence[str]) -> tuple[int, str]:
    """Appends the events of `parts` (`batch_part`) in the transaction `lock_chain` opened
    and commits it, in one round trip; returns once the commit is flushed (an error at
    COMMIT raises here), with the (seq, hash) of the last event. The function takes the
    lock again (re-entrant within the transaction), so it reads the tail under the lock
    whoever called it. The batch goes in as a string literal quoted by libpq
    (`PQescapeLiteral`, which knows the connection's encoding and quoting rules): a
    parameter would need the extended protocol, which cannot carry the COMMIT in the same
    message."""
    batch = "[" + ",".join(parts) + "]"
    literal = pq.Escaping(raw.pgconn).escape_literal(batch.encode())
    with raw.cursor() as cursor:
        cursor.execute(_APPEND_HEAD + literal + _APPEND_TAIL, prepare=False)
        last = cursor.fetchone()
    return int(last[0]), str(last[1])


class HeldAppender(HeldConnection):
    """One pooled connection of a PostgreSQL engine, kept for the audit appends of this
    process (a checkout and check-in per append cost client CPU, and the leader takes the
    chain lock on it before it collects its batch). Not thread-safe on purpose: its one
    user at a time is the append's group-commit leader. Any failure on it - a killed
    backend, an interrupted lock wait, a statement deadline - closes it (its transaction,
    and with it the lock, ends on the server) and the next append takes a fresh one."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._engine: Callable[[], Engine | None] = weakref.ref(engine)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Callable[[Sequence[str]], tuple[int, str]]]:
        """Holds the chain lock in a transaction on the held connection and yields the call
        that appends a batch and commits; leaving without that call rolls back (the lock is
        released, nothing written)."""
        # What the pool's checkout would have seen (a session ended by a restart, the
        # database cooling down after a stall) sends a held connection back for a fresh one.
        connection, generation = self.take(self._connect, unusable=self._unusable)
        raw: Any = connection.connection.driver_connection
        appended = False

        def append(parts: Sequence[str]) -> tuple[int, str]:
            nonlocal appended
            appended = True
            return append_locked(raw, parts)

        try:
            lock_chain(raw)
            yield append
            if not appended:
                with raw.cursor() as cursor:
                    cursor.execute(b"ROLLBACK", prepare=False)
        except BaseException:
            # The statement may be half on the wire, a lock may be held: not trusted again.
            self.discard(connection)
            raise

        def as_pooled() -> None:
            raw.autocommit = False

        self.keep(connection, generation, unkept=as_pooled)

    def _connect(self) -> Connection:
        engine = self._engine()
        if engine is None:
            raise RuntimeError("the audit log's engine is gone")
        connection = engine.connect()
        connection.connection.driver_connection.autocommit = True  # type: ignore[union-attr]
        return connection

    def _unusable(self, connection: Connection) -> bool:
        engine = self._engine()
        guard = stall_guard(engine) if engine is not None else None
        if guard is not None and guard.check_cooling_down():
            return True
        raw: Any = connection.connection.driver_connection
        return session_ended(raw)
