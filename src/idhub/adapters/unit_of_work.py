"""`UnitOfWork` (core/transactions.py) on the SQL engine, and the helpers stores open their
connections with so that they join it.

An open unit of work lives in a context variable, so it belongs to the thread (or task) that
opened it: a store method called inside `atomic()` on the same engine writes on the unit's
connection instead of opening a transaction of its own, and `SqlAuditLog.record` queues its
event instead of appending on a second connection (which on SQLite would wait for the write
lock this very thread holds). The queued events are appended with `record_in` as the last
statement before COMMIT, so the append lock (PostgreSQL's advisory lock, SQLite's write lock)
is held for as short a time as a standalone append holds it, and no event is committed for a
change that rolled back. Concurrent units share one transaction and one commit
(`unit_group.py`, docs/audit.md "Group commit of units of work").

On SQLite the unit takes the database write lock with its first statement (a read snapshot
could not be upgraded under contention) and queues writers on a turn of their own
(`writer_serial`) - this process's on a thread lock, several processes' (`--workers 2`) on an
advisory file lock beside the database - so they wait for each other and are let in the moment
the previous writer is done, rather than in SQLite's busy handler, which sleeps in growing
steps of up to 100 ms and left a second worker's code exchange waiting there most of the time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine

from idhub.adapters._storage_errors import database_errors, storage_error
from idhub.adapters.unit_group import TAKE_SQLITE_WRITE_LOCK, UnitGroups
from idhub.core.audit import Actor, EventType, Outcome, PendingEvent, RequestContext
from idhub.core.transactions import Transaction
from idhub.errors import StorageError

if TYPE_CHECKING:
    from idhub.adapters.audit_store import SqlAuditLog


@dataclass
class OpenUnit:
    """The transaction a unit of work holds open, and what waits for its commit."""

    engine: Engine
    conn: Connection
    events: list[PendingEvent] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    _cursor: Any = None

    def cursor(self) -> Any:
        """The driver cursor of the unit's connection, one for the whole unit: the grants'
        statements run inside the write section every other writer waits for (SQLite's write
        lock, a group's turn), where a driver call costs a fraction of SQLAlchemy's execution
        path and a cursor made per statement showed in the profile. Each caller fetches its
        rows before the next statement. Closed with the unit (`close`)."""
        if self._cursor is None:
            self._cursor = self.conn.connection.cursor()
        return self._cursor

    def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            with contextlib.suppress(*database_errors()):
                cursor.close()

    @contextlib.contextmanager
    def nested(self) -> Iterator[None]:
        """A part of this unit that rolls back alone: a SAVEPOINT, and the events and
        after-commit callbacks queued inside it are dropped with it (they must not commit for
        changes that did not happen). For one grant among several sharing a unit
        (oidc/grant_batch.py).

        Fixed driver statements on the unit's cursor, not `Connection.begin_nested()`:
        SQLAlchemy compiles SAVEPOINT and RELEASE afresh on every use (not cacheable), which
        profiled at more than the grant's own statements. SQLite and PostgreSQL both keep a
        savepoint after ROLLBACK TO (PostgreSQL leaves a failed statement's abort state
        there), so RELEASE follows either way."""
        events, callbacks = len(self.events), len(self.callbacks)
        cursor = self.cursor()
        cursor.execute("SAVEPOINT idhub_part")
        try:
            yield
        except BaseException:
            del self.events[events:]
            del self.callbacks[callbacks:]
            cursor.execute("ROLLBACK TO SAVEPOINT idhub_part")
            cursor.execute("RELEASE SAVEPOINT idhub_part")
            raise
        cursor.execute("RELEASE SAVEPOINT idhub_part")

    def record(
        self,
        event_type: EventType,
        *,
        actor: Actor,
        target: str | None = None,
        outcome: Outcome = "success",
        details: dict[str, Any] | None = None,
        ctx: RequestContext | None = None,
    ) -> None:
        self.events.append(
            PendingEvent(event_type, actor, target, outcome, dict(details or {}), ctx)
        )

    def record_many(self, events: Sequence[PendingEvent]) -> None:
        self.events.extend(events)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)


_open: ContextVar[OpenUnit | None] = ContextVar("idhub_unit_of_work", default=None)
_registry_lock = threading.Lock()

# How long a writer waits for another process's turn before it goes ahead anyway and lets
# SQLite's own lock (and busy timeout) decide: the file lock only makes waiting prompt, it
# is never what keeps the database consistent, so a stuck process cannot wedge the others.
_TURN_PATIENCE = 2.0
_POLL_FIRST, _POLL_MAX = 0.00005, 0.0005


class WriterTurn:
    """One SQLite database's writers taking turns: a thread lock for this process, then an
    advisory `flock` on `DATABASE.write-lock` for the other processes on the same file."""

    def __init__(self, path: str | None) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._fd: int | None = None
        self._pid = 0
        self._flocked = False

    def __enter__(self) -> WriterTurn:
        self._lock.acquire()
        try:
            self._flocked = self._take_file_lock()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._flocked and self._fd is not None:
                self._flocked = False
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def _take_file_lock(self) -> bool:
        if self._path is None:
            return False
        try:
            if self._fd is None or self._pid != os.getpid():
                # A forked child shares its parent's open file and so its lock: its own file.
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            fd = self._fd
            # Polled rather than a blocking flock, so the wait is bounded; at most one thread
            # per process polls (the others wait on the thread lock), every 50-500 µs.
            deadline, pause = time.monotonic() + _TURN_PATIENCE, _POLL_FIRST
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(pause)
                    pause = min(pause * 2, _POLL_MAX)
        except OSError:
            return False  # a read-only directory: SQLite's busy handler still serialises


_turns: weakref.WeakKeyDictionary[Engine, WriterTurn] = weakref.WeakKeyDictionary()


def open_unit(engine: Engine) -> OpenUnit | None:
    """The unit of work this thread holds open on `engine`, if any."""
    unit = _open.get()
    return unit if unit is not None and unit.engine is engine else None


def writer_serial(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """The turn SQLite writers of `engine` queue on (nothing on PostgreSQL, or for a caller
    already inside a unit of work, which holds it)."""
    if engine.dialect.name != "sqlite" or open_unit(engine) is not None:
        return contextlib.nullcontext()
    return serial_lock(engine)


def serial_lock(engine: Engine) -> WriterTurn:
    """The lock behind `writer_serial` itself, for a writer that queues its own way (the CAS
    ticket store's group commit); never to be taken inside a unit of work."""
    with _registry_lock:
        turn = _turns.get(engine)
        if turn is None:
            database = engine.url.database
            path = f"{database}.write-lock" if database and database != ":memory:" else None
            turn = _turns[engine] = WriterTurn(path)
    return turn


@contextlib.contextmanager
def begin(engine: Engine, *, savepoint: bool = False) -> Iterator[Connection]:
    """`engine.begin()`, or the open unit's connection when there is one. `savepoint`: the
    caller catches a statement's error and carries on, which inside a joined PostgreSQL
    transaction needs a SAVEPOINT (an error aborts the whole transaction otherwise)."""
    unit = open_unit(engine)
    if unit is None:
        with engine.begin() as conn:
            yield conn
    elif savepoint:
        with unit.conn.begin_nested():
            yield unit.conn
    else:
        yield unit.conn


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """`engine.connect()` for reads, or the open unit's connection (which sees its own
    uncommitted changes)."""
    unit = open_unit(engine)
    if unit is None:
        with engine.connect() as conn:
            yield conn
    else:
        yield unit.conn


class SqlUnitOfWork:
    def __init__(
        self, engine: Engine, audit_log: SqlAuditLog, *, group: bool | None = None
    ) -> None:
        self._engine = engine
        self._audit_log = audit_log
        self._sqlite = engine.dialect.name == "sqlite"
        # Concurrent units share a transaction and its commit (unit_group.py). By default on
        # PostgreSQL only: there a commit is a WAL flush under the advisory lock, worth sharing;
        # SQLite's WAL commit is cheap and its writers are serialised anyway, and grouping
        # measured the same there (docs/performance.md), so it keeps one transaction per unit.
        if group is None:
            group = engine.dialect.name == "postgresql"
        self.groups: UnitGroups | None = None
        if group:
            self.groups = UnitGroups(
                engine,
                audit_log,
                lambda conn: OpenUnit(engine, conn),
                _open,
                lambda: writer_serial(engine),
            )

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Transaction]:
        outer = open_unit(self._engine)
        if outer is not None:
            yield outer
            return
        try:
            unit = self._run_atomic()
            with unit as opened:
                yield opened
        except database_errors() as exc:  # the driver's too: savepoints run on its cursor
            raise storage_error(exc, "unit of work") from exc
        for callback in opened.callbacks:
            callback()
        self._audit_log.notify_listeners()

    @contextlib.contextmanager
    def nested(self) -> Iterator[None]:
        """A part of the unit of work open on this thread that rolls back alone
        (`OpenUnit.nested`); `StorageError` when none is open."""
        unit = open_unit(self._engine)
        if unit is None:
            raise StorageError("nested() needs an open unit of work")
        try:
            with unit.nested():
                yield
        except database_errors() as exc:
            raise storage_error(exc, "unit of work") from exc

    def _run_atomic(self) -> contextlib.AbstractContextManager[OpenUnit]:
        if self.groups is not None:
            return self.groups.unit()
        return self._run_alone()

    @contextlib.contextmanager
    def _run_alone(self) -> Iterator[OpenUnit]:
        with writer_serial(self._engine), self._engine.connect() as conn:
            tx = conn.begin()
            unit = OpenUnit(self._engine, conn)
            token = _open.set(unit)
            try:
                if self._sqlite:
                    # The write lock now, before any read: see the module docstring. On the
                    # unit's cursor: SQLAlchemy's execution path cost more than the statement.
                    unit.cursor().execute(TAKE_SQLITE_WRITE_LOCK)
                yield unit
                # `record_in` raises `AuditError` (a 503 "nothing was done"); rollback follows.
                appended = self._audit_log.record_in(conn, unit.events) if unit.events else None
                unit.close()
                tx.commit()
                if appended is not None:
                    appended.committed()
            except BaseException:
                unit.close()
                if tx.is_active:
                    tx.rollback()
                raise
            finally:
                _open.reset(token)
