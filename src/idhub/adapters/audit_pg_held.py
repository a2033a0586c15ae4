"""The held connection and its two round trips of the PostgreSQL append (the path is told in
adapters/audit_pg_append.py). A module of its own because it needs psycopg and the
deadline guard at import, which a SQLite worker never loads (tests/test_worker_memory.py):
adapters/audit_store.py imports it only for a PostgreSQL engine.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.pq.abc import PGresult
from sqlalchemy import Connection, Engine

from idhub.adapters._pg_deadline import stall_guard, unfit_to_reuse
from idhub.adapters.audit_pg_append import ADVISORY_LOCK_KEY
from idhub.adapters.held_connection import HeldConnection

# One simple-query message each (several statements, no parameters: PostgreSQL's simple
# protocol runs them in order and stops at the first error), so taking the lock is one round
# trip and the append with its COMMIT another. psycopg's pipeline mode took five for the same.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})".encode()
_APPEND_HEAD = b"SELECT last_seq, last_hash FROM idhub_audit_append("
_APPEND_TAIL = b"::json); COMMIT"


def _simple(raw: Any, query: bytes) -> list[PGresult]:
    """Sends `query` (a simple-protocol message of one or more statements, no parameters) on
    psycopg connection `raw` and returns its results once all arrived, raising the first
    statement's error as psycopg's cursor would. The same round trip as `cursor.execute`
    without the cursor's own bookkeeping (query conversion, result selection, row loaders):
    ~15 µs less client CPU per round trip, measured, and an append is two. The wait is the
    connection's own, so the answer deadline (adapters/_pg_deadline.py) bounds it."""
    with raw.lock:
        raw.pgconn.send_query(query)
        results: list[PGresult] = raw.wait(generators.execute(raw.pgconn))
    for result in results:
        status = result.status
        if status == pq.ExecStatus.FATAL_ERROR:
            raise pg_errors.error_from_result(result, encoding=raw.info.encoding)
        if status != pq.ExecStatus.TUPLES_OK and status != pq.ExecStatus.COMMAND_OK:
            raise pg_errors.InternalError(f"unexpected result: {pq.ExecStatus(status).name}")
    if not results:
        raise pg_errors.InternalError("got no result from the query")
    return results


def lock_chain(raw: Any) -> None:
    """Opens a transaction on psycopg connection `raw` (idle, in autocommit, so psycopg sends
    no BEGIN of its own) and returns once it holds the chain lock, in one round trip. The
    lock is held until that transaction ends (`append_locked` commits it)."""
    _simple(raw, _BEGIN_LOCKED)


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
    appended = _simple(raw, _APPEND_HEAD + literal + _APPEND_TAIL)[0]
    # One row of text values (the simple protocol's format): bigint and ASCII hex.
    seq, digest = appended.get_value(0, 0), appended.get_value(0, 1)
    if appended.ntuples != 1 or seq is None or digest is None:
        raise pg_errors.InternalError("the append returned no tail")
    return int(seq), bytes(digest).decode("ascii")


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
                _simple(raw, b"ROLLBACK")
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
        return unfit_to_reuse(guard, connection.connection.driver_connection)  # type: ignore[arg-type]
