"""Group commit of units of work on PostgreSQL: many requests' changes and events in one
transaction, one advisory lock, one durable COMMIT.

Why: every unit of work appends its events, and an append holds the chain's advisory lock from
reading the tail until COMMIT has flushed the WAL (the next writer must see the tail it links
to). Alone, each refresh or code exchange therefore waits for the lock and then holds it across
its own disk flush: one flush per request, in series, for the whole cluster.

How (leader and members): the first unit to arrive opens a transaction on a pooled connection
and becomes the group's leader; units arriving while the group is open join it. Each member
runs its own block, in its own thread, on the group's connection - one at a time (a turn), the
leader's first and every later one inside a SAVEPOINT, so a block that raises rolls back only
its own statements and the others are unaffected. When no joined member is left running its
block, the leader closes the group, appends every member's events after the chain tail (taking
the advisory lock only now) and commits once. Each member waits for that outcome and returns
only after it: a request never answers before the transaction holding its change and its event
is durable, and nothing waits in memory after its request returned. If the append or the
commit fails, the transaction rolls back as a whole and every member fails with the same error
(a 503 "nothing was done"): no change without its event, no event without its change, nothing
half-committed.

What joining means for the blocks: they run one after another in one transaction, so a later
member sees the earlier members' changes as if the requests had been served one by one; row
locks are held until the group commits. The group is closed to newcomers once `MAX_MEMBERS`
have joined; a newcomer then starts the next group, whose blocks run while this one commits.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, RootTransaction

from idhub.adapters._storage_errors import database_errors, storage_error
from idhub.core.audit import PendingEvent
from idhub.errors import AuditError, IdhubError

if TYPE_CHECKING:
    from idhub.adapters.audit_store import SqlAuditLog
    from idhub.adapters.unit_of_work import OpenUnit

MAX_MEMBERS = 32
# A write statement that changes nothing: SQLite takes the database write lock for it, so a
# transaction that begins with it holds the lock before any read (unit_of_work's docstring).
# The one spelling for units, unit groups and the audit log's own appends.
TAKE_SQLITE_WRITE_LOCK = "UPDATE audit_anchor SET id = id WHERE 0"


class _Group:
    __slots__ = (
        "active", "broken", "conn", "done", "error", "events", "finished", "idle", "joined",
        "open", "savepoints", "serial", "turn", "tx",
    )  # fmt: skip

    def __init__(
        self,
        conn: Connection,
        tx: RootTransaction,
        serial: contextlib.AbstractContextManager[object],
    ) -> None:
        self.conn = conn
        self.serial = serial  # held by the leader until the group has committed
        self.tx = tx
        self.turn = threading.Lock()  # who uses `conn` now
        self.joined = 1  # the leader
        self.active = 1  # joined and not through their block yet
        self.open = True
        self.events: list[PendingEvent] = []
        self.done = False
        self.error: IdhubError | None = None
        self.finished = threading.Event()  # the members wait on this, not on everyone's news
        self.idle: threading.Condition | None = None  # the leader waits on this for active == 0
        self.broken: IdhubError | None = None  # the connection failed between two blocks
        self.savepoints = 0


class UnitGroups:
    """The open group of one engine's units of work, and the leader's work."""

    def __init__(
        self,
        engine: Engine,
        audit_log: SqlAuditLog,
        new_unit: Callable[[Connection], OpenUnit],
        current: ContextVar[OpenUnit | None],
        serial: Callable[[], contextlib.AbstractContextManager[object]],
    ) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._serial = serial
        self._audit_log = audit_log
        self._new_unit = new_unit
        self._current = current
        self._lock = threading.Lock()  # guards the groups' counters and the open group
        self._open: _Group | None = None
        # How many groups committed and how many units they held (for tests and metrics).
        self.commits = 0
        self.units = 0

    def joined(self) -> int:
        """How many units have joined the group that is open now (0: none is open)."""
        with self._lock:
            group = self._open
            return group.joined if group is not None and group.open else 0

    @contextlib.contextmanager
    def unit(self) -> Iterator[OpenUnit]:
        group, leader = self._join()  # a leader holds the turn already
        ran = False
        try:
            if not leader:
                group.turn.acquire()
            try:
                if group.broken is not None:
                    raise _fresh(group.broken)
                unit = self._new_unit(group.conn)
                savepoint = None
                if not leader:
                    # Never released (one round trip saved): it lives until the group commits.
                    # On the unit's driver cursor: SQLAlchemy's execution path (even
                    # `exec_driver_sql`) costs more than the statement in this section.
                    group.savepoints += 1
                    savepoint = f"idhub_unit_{group.savepoints}"
                    unit.cursor().execute(f"SAVEPOINT {savepoint}")
                token = self._current.set(unit)
                try:
                    yield unit
                except BaseException:
                    self._undo(group, unit, savepoint)
                    raise
                finally:
                    self._current.reset(token)
                    unit.close()
            finally:
                group.turn.release()
            ran = True
        finally:
            with self._lock:
                if ran:
                    group.events.extend(unit.events)
                group.active -= 1
                if group.active == 0 and group.idle is not None:
                    group.idle.notify()
            if leader:
                self._lead(group)
        if not leader:
            self._wait(group)
        if group.error is not None:
            raise _fresh(group.error)

    def _undo(self, group: _Group, unit: OpenUnit, savepoint: str | None) -> None:
        """A block raised: takes back its statements and nobody else's. The leader's block
        runs first, before anyone joined it, so it needs no savepoint: the transaction is
        rolled back and begun again for the members waiting for their turn."""
        try:
            if savepoint is not None:
                unit.cursor().execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
            else:
                if group.tx.is_active:
                    group.tx.rollback()
                group.tx = group.conn.begin()
                self._lock_sqlite(group.conn)
        except database_errors() as exc:
            group.broken = storage_error(exc, "unit of work")
            group.broken.__cause__ = exc

    def _join(self) -> tuple[_Group, bool]:
        with self._lock:
            group = self._open
            if group is not None and group.open:
                group.joined += 1
                group.active += 1
                if group.joined >= MAX_MEMBERS:
                    group.open = False
                return group, False
        # No group to join: lead a new one. The connection is opened outside the lock, so
        # a slow connect holds up nobody who could join the current group meanwhile.
        serial = self._serial()  # SQLite: this process's and the other processes' writers
        serial.__enter__()
        try:
            conn = self._engine.connect()
            try:
                tx = conn.begin()
                self._lock_sqlite(conn)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            serial.__exit__(None, None, None)
            raise
        group = _Group(conn, tx, serial)
        group.turn.acquire()  # the leader's block goes first
        with self._lock:
            self._open = group
        return group, True

    def _lock_sqlite(self, conn: Connection) -> None:
        if self._sqlite:
            # The write lock now, before any read (see unit_of_work's module docstring).
            conn.exec_driver_sql(TAKE_SQLITE_WRITE_LOCK)

    def _lead(self, group: _Group) -> None:
        """Waits until every member is through its block, then appends and commits."""
        with self._lock:
            group.idle = threading.Condition(self._lock)
            while group.active > 0:
                group.idle.wait()
            group.open = False
            if self._open is group:
                self._open = None
            events = list(group.events)
        error: IdhubError | None = group.broken
        try:
            try:
                if error is None:
                    # `record_in` raises `AuditError` (a 503 "nothing was done").
                    appended = self._audit_log.record_in(group.conn, events) if events else None
                    group.tx.commit()
                    if appended is not None:
                        appended.committed()
            except AuditError as exc:
                error = exc
            except database_errors() as exc:
                error = storage_error(exc, "unit of work")
                error.__cause__ = exc
            except BaseException as exc:  # every member must learn the outcome, whatever it was
                error = AuditError("the transaction was interrupted, so nothing was done")
                error.__cause__ = exc
            if error is not None and group.tx.is_active:
                with contextlib.suppress(*database_errors()):
                    group.tx.rollback()
        finally:
            try:
                with contextlib.suppress(*database_errors()):
                    group.conn.close()
            finally:
                group.serial.__exit__(None, None, None)
            with self._lock:
                group.error, group.done = error, True
                if error is None:
                    self.commits += 1
                    self.units += group.joined
            group.finished.set()

    def _wait(self, group: _Group) -> None:
        group.finished.wait()


def _fresh(error: IdhubError) -> IdhubError:
    """Each member raises its own copy: one exception object raised in several threads at once
    would have its traceback rewritten under the others' feet."""
    mine = copy.copy(error)
    mine.__cause__ = error.__cause__
    return mine
