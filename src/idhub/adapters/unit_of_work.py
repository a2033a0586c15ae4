"""`UnitOfWork` (core/transactions.py) on the SQL engine, and the helpers stores open their
connections with so that they join it.

An open unit of work lives in a context variable, so it belongs to the thread (or task) that
opened it: a store method called inside `atomic()` on the same engine writes on the unit's
connection instead of opening a transaction of its own, and `SqlAuditLog.record` queues its
event instead of appending on a second connection (which on SQLite would wait for the write
lock this very thread holds). The queued events are appended with `record_in` as the last
statement before COMMIT, so the append lock (PostgreSQL's advisory lock, SQLite's write lock)
is held for as short a time as a standalone append holds it, and no event is committed for a
change that rolled back.

On SQLite the unit takes the database write lock with its first statement (a read snapshot
could not be upgraded under contention) and queues this process's writers on a lock of its
own, so they wait on a condition rather than in SQLite's sleep-and-retry busy loop.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters._storage_errors import storage_error
from idhub.core.audit import Actor, EventType, Outcome, PendingEvent, RequestContext
from idhub.core.transactions import Transaction

if TYPE_CHECKING:
    from idhub.adapters.audit_store import SqlAuditLog


@dataclass
class OpenUnit:
    """The transaction a unit of work holds open, and what waits for its commit."""

    engine: Engine
    conn: Connection
    events: list[PendingEvent] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)

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
_serial_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def open_unit(engine: Engine) -> OpenUnit | None:
    """The unit of work this thread holds open on `engine`, if any."""
    unit = _open.get()
    return unit if unit is not None and unit.engine is engine else None


def writer_serial(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """The in-process queue for SQLite writers of `engine` (nothing on PostgreSQL, or for a
    caller already inside a unit of work, which holds it)."""
    if engine.dialect.name != "sqlite" or open_unit(engine) is not None:
        return contextlib.nullcontext()
    return serial_lock(engine)


def serial_lock(engine: Engine) -> threading.Lock:
    """The lock behind `writer_serial` itself, for a writer that queues its own way (the CAS
    ticket store's group commit); never to be taken inside a unit of work."""
    with _registry_lock:
        lock = _serial_locks.get(engine)
        if lock is None:
            lock = _serial_locks[engine] = threading.Lock()
    return lock


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
    def __init__(self, engine: Engine, audit_log: SqlAuditLog) -> None:
        self._engine = engine
        self._audit_log = audit_log
        self._sqlite = engine.dialect.name == "sqlite"

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
        except SQLAlchemyError as exc:
            raise storage_error(exc, "unit of work") from exc
        for callback in opened.callbacks:
            callback()
        self._audit_log.notify_listeners()

    @contextlib.contextmanager
    def _run_atomic(self) -> Iterator[OpenUnit]:
        with writer_serial(self._engine), self._engine.connect() as conn:
            tx = conn.begin()
            unit = OpenUnit(self._engine, conn)
            token = _open.set(unit)
            try:
                if self._sqlite:
                    # The write lock now, before any read: see the module docstring.
                    conn.exec_driver_sql("UPDATE audit_anchor SET id = id WHERE 0")
                yield unit
                # `record_in` raises `AuditError` (a 503 "nothing was done"); rollback follows.
                tail = self._audit_log.record_in(conn, unit.events) if unit.events else None
                tx.commit()
                if tail is not None:
                    self._audit_log.note_tail(tail)
            except BaseException:
                if tx.is_active:
                    tx.rollback()
                raise
            finally:
                _open.reset(token)
