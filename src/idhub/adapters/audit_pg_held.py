"""The held connection and its two round trips of the PostgreSQL append (the path is told in
adapters/audit_pg_append.py). A module of its own because it needs psycopg and the
deadline guard at import, which a SQLite worker never loads (tests/test_worker_memory.py):
adapters/audit_store.py imports it only for a PostgreSQL engine.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from psycopg import errors as pg_errors
from psycopg import generators, pq
from psycopg.abc import PQGen
from psycopg.pq.abc import PGconn, PGresult
from sqlalchemy import Connection, Engine

from idhub.adapters._pg_deadline import stall_guard, unfit_to_reuse
from idhub.adapters.audit_pg_append import ADVISORY_LOCK_KEY
from idhub.adapters.held_connection import HeldConnection

# One simple-query message (several statements, no parameters: PostgreSQL's simple protocol
# runs them in order and stops at the first error), so taking the lock is one round trip.
_BEGIN_LOCKED = f"BEGIN; SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})".encode()
# The append is a statement prepared on the server once per held connection, its batch a
# parameter, and goes out with its COMMIT and a Sync in libpq's pipeline mode: one round trip,
# as the simple-protocol message it replaces (the batch as a literal in the SQL text). That
# message's text was lexed, analysed and planned again by the backend for every append, the
# batch's few kilobytes of literal included: ~20 % of the backend's CPU per append of ten
# events, measured (docs/performance.md, branch `pgcpu`). psycopg's own pipeline took five
# round trips for the same, hence libpq's directly.
_APPEND = b"SELECT last_seq, last_hash FROM idhub_audit_append($1::json)"
_COMMIT = b"COMMIT"
# A name of its own for each connection it is prepared on: a connection that goes back to the
# pool (engine disposed while held) may keep an earlier one, and psycopg may deallocate every
# statement of a pooled connection (on a ROLLBACK it sees), so no name is reused or trusted
# once the connection was out of the appender's hands.
_NAMES = itertools.count(1)


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
    _check(raw, results)
    if not results:
        raise pg_errors.InternalError("got no result from the query")
    return results


def _check(raw: Any, results: list[PGresult]) -> None:
    """Raises the first statement's error as psycopg's cursor would, or InternalError for a
    result that is neither rows nor a command's completion."""
    for result in results:
        status = result.status
        if status == pq.ExecStatus.FATAL_ERROR:
            raise pg_errors.error_from_result(result, encoding=raw.info.encoding)
        if status != pq.ExecStatus.TUPLES_OK and status != pq.ExecStatus.COMMAND_OK:
            raise pg_errors.InternalError(f"unexpected result: {pq.ExecStatus(status).name}")


def _until_sync(pgconn: PGconn) -> PQGen[list[PGresult]]:
    """Flushes what was queued in pipeline mode on `pgconn` and collects every statement's
    results up to the pipeline's Sync (an error's, and the aborted ones' after it,
    included)."""
    yield from generators.send(pgconn)
    results: list[PGresult] = []
    while True:
        got = yield from generators.fetch_many(pgconn)
        if not got:
            # Nothing queued any more and no Sync: never left waiting for one.
            raise pg_errors.InternalError("the pipeline ended without its sync")
        if got[0].status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        results.extend(got)


def _pipelined(raw: Any, send: Callable[[PGconn], None]) -> list[PGresult]:
    """Sends the statements `send` queues on psycopg connection `raw`'s libpq connection in
    pipeline mode, then a Sync, and returns their results once the Sync arrived: one round
    trip, with the connection's own wait (so the answer deadline bounds it). The first
    statement's error is raised as `_simple` raises it; after an error the server skips
    every statement up to the Sync, so a COMMIT queued behind a failed statement never
    runs."""
    pgconn = raw.pgconn
    with raw.lock:
        pgconn.enter_pipeline_mode()
        send(pgconn)
        pgconn.pipeline_sync()
        # On an exception the caller discards the connection, pipeline mode and all.
        results: list[PGresult] = raw.wait(_until_sync(pgconn))
        pgconn.exit_pipeline_mode()
    _check(raw, results)
    return results


def lock_chain(raw: Any) -> None:
    """Opens a transaction on psycopg connection `raw` (idle, in autocommit, so psycopg sends
    no BEGIN of its own) and returns once it holds the chain lock, in one round trip. The
    lock is held until that transaction ends (`append_locked` commits it)."""
    _simple(raw, _BEGIN_LOCKED)


def append_locked(raw: Any, parts: Sequence[str], name: bytes, *, prepare: bool) -> tuple[int, str]:
    """Appends the events of `parts` (`batch_part`) in the transaction `lock_chain` opened
    and commits it, in one round trip; returns once the commit is flushed (an error at
    COMMIT raises here), with the (seq, hash) of the last event. The function takes the
    lock again (re-entrant within the transaction), so it reads the tail under the lock
    whoever called it. The append runs as the statement prepared as `name` on this
    connection's session, prepared first in the same round trip when `prepare`."""
    batch = ("[" + ",".join(parts) + "]").encode()

    def send(pgconn: PGconn) -> None:
        if prepare:
            pgconn.send_prepare(name, _APPEND)
        pgconn.send_query_prepared(name, [batch])
        pgconn.send_query_params(_COMMIT, None)

    results = _pipelined(raw, send)
    appended, committed = results[-2], results[-1]
    if committed.command_status != _COMMIT:
        # COMMIT of a transaction that had failed answers ROLLBACK, without an error.
        raise pg_errors.InternalError("the append's transaction did not commit")
    # One row of text values: bigint and ASCII hex.
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
        # The held connection the append is prepared on, and the statement's name there.
        self._prepared: tuple[Connection, bytes] | None = None

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
        if self._prepared is not None and self._prepared[0] is connection:
            name, fresh = self._prepared[1], False
        else:
            name, fresh = b"idhub_audit_append_%d" % next(_NAMES), True

        def append(parts: Sequence[str]) -> tuple[int, str]:
            nonlocal appended
            appended = True
            tail = append_locked(raw, parts, name, prepare=fresh)
            self._prepared = (connection, name)
            return tail

        try:
            lock_chain(raw)
            yield append
            if not appended:
                _simple(raw, b"ROLLBACK")
        except BaseException:
            # The statement may be half on the wire, a lock may be held: not trusted again.
            self._prepared = None
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
