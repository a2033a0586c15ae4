"""The hash-chained audit table.

Appends are serialised so concurrent writers - threads, worker processes, replicas - still
produce one unbroken chain: PostgreSQL takes a transaction-scoped advisory lock, SQLite its
database write lock, before the chain tail is read. Inside one process, callers share a
group commit: whoever arrives while a write is in flight queues, and the next writer takes
the whole queue in one transaction (one lock, one commit), so throughput grows with load
while a lone caller pays for exactly one transaction. `record` returns only once its event
is committed; if the write fails every caller in that batch gets `AuditError`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters._storage_errors import database_errors, storage_error
from idhub.adapters.audit_pg_append import batch_part, chain_rows, lock_and_read_tail
from idhub.adapters.audit_query import COLUMNS, columns, filtered, row_event
from idhub.adapters.audit_sqlite_append import (
    HeldWriter,
    sqlite_append,
    sqlite_tail,
)
from idhub.adapters.db import audit_anchor, audit_events
from idhub.adapters.driver_read import can_hold_connections
from idhub.adapters.unit_group import TAKE_SQLITE_WRITE_LOCK
from idhub.adapters.unit_of_work import WriterTurn, open_unit, serial_lock, writer_serial
from idhub.core.audit import (
    ACTOR_TYPES,
    OUTCOMES,
    Actor,
    AuditEvent,
    AuditFilter,
    EventType,
    Outcome,
    PendingEvent,
    RequestContext,
    plain_details_text,
    scrub_flat,
    storable_details,
    storable_text,
)
from idhub.core.audit_chain import (
    GENESIS_HASH,
    ChainVerifier,
    VerifyReport,
    canonical_details,
    canonical_flat_details,
    event_tail,
)
from idhub.core.clock import Clock
from idhub.errors import AuditError, AuditUnavailable, InvalidInput, StorageUnavailable

if TYPE_CHECKING:
    from idhub.adapters.audit_pg_held import HeldAppender

_VERIFY_CHUNK = 20_000
# What an observer learns of a committed event: its type, actor id and scrubbed details.
ObservedEvent = tuple[str, str | None, dict[str, Any]]
_NO_CONTEXT = RequestContext()
log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """An event with everything but its place in the chain computed (outside the lock)."""

    values: tuple[Any, ...]  # ts .. details, in COLUMNS order
    tail: str
    # The scrubbed details as a dict, for observers (metrics) that must not parse JSON.
    details: dict[str, Any] | None = None


class _Waiter:
    """One caller of `_append`. It sleeps on its own lock, which a leader releases exactly
    once: when its events are written (`done`), or to hand it the lead (`lead`)."""

    __slots__ = ("done", "error", "events", "lead", "part", "wake")

    def __init__(self, events: list[_Prepared], part: str = "") -> None:
        self.events = events
        self.part = part  # PostgreSQL: the events as JSON, encoded before queueing
        self.done = False
        self.lead = False
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()


@dataclass(frozen=True)
class Anchor:
    first_seq: int
    prev_hash: str
    archive_file: str | None = None


@dataclass(frozen=True)
class AppendedIn:
    """Events `record_in` placed in a caller's transaction: the last (seq, hash), and
    `committed`, which the caller calls after its COMMIT succeeded. Observers (metrics)
    learn of the events only then: a transaction that rolls back, or whose COMMIT fails,
    counts nothing."""

    seq: int
    hash: str
    committed: Callable[[], None]


class SqlAuditLog:
    def __init__(self, engine: Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._pg = engine.dialect.name == "postgresql"
        mark = "%s" if self._pg else "?"
        # Built from constants only; a pre-built driver statement keeps `record` cheap.
        columns, marks = ", ".join(COLUMNS), ", ".join([mark] * len(COLUMNS))
        self._insert_sql = f"INSERT INTO audit_events ({columns}) VALUES ({marks})"  # noqa: S608
        # A SQLite file: the appends keep one pooled connection and take the writers' turn
        # directly (`writer_serial` would look it up for every append).
        self._held: tuple[HeldWriter, WriterTurn] | None = None
        if can_hold_connections(engine):
            self._held = HeldWriter(engine), serial_lock(engine)
        # PostgreSQL: the appends keep one connection too, and the leader takes the chain
        # lock on it before it collects its batch (`_lead_locked`).
        self._pg_held: HeldAppender | None = None
        if self._pg:
            # Imported here: it loads psycopg, which a SQLite worker never needs.
            from idhub.adapters.audit_pg_held import HeldAppender

            self._pg_held = HeldAppender(engine)
        self._mutex = threading.Lock()
        self._queue: list[_Waiter] = []
        self._writing = False
        # Called (without arguments) after each commit; sinks use it to wake up early.
        self.listeners: list[Callable[[], None]] = []
        # Called with a committed batch's events as one list of (event type, actor id,
        # details) once they are committed (`record`, `record_many`, or the caller's
        # transaction after `record_in`), so a batch is counted at once (core/metrics.py
        # `count_audit_events`); and with the seconds each durable write took.
        self.observers: list[Callable[[list[ObservedEvent]], None]] = []
        self.write_timers: list[Callable[[float], None]] = []

    # ------------------------------------------------------------------ writing

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
        unit = open_unit(self._engine)
        if unit is not None:
            # Inside a unit of work the event commits with the change it records.
            self._prepare(event_type, actor, target, outcome, details, ctx)  # fails here, early
            unit.record(
                event_type, actor=actor, target=target, outcome=outcome, details=details, ctx=ctx
            )
            return
        self._append([self._prepare(event_type, actor, target, outcome, details, ctx)])

    def record_many(self, events: Sequence[PendingEvent]) -> None:
        unit = open_unit(self._engine)
        if unit is not None:
            unit.record_many(events)
            return
        prepared = [
            self._prepare(e.event_type, e.actor, e.target, e.outcome, e.details, e.ctx)
            for e in events
        ]
        if prepared:
            self._append(prepared)

    def _prepare(
        self,
        event_type: EventType | str,
        actor: Actor,
        target: str | None,
        outcome: str,
        details: dict[str, Any] | None,
        ctx: RequestContext | None,
    ) -> _Prepared:
        # The vocabulary is closed: a typo in a caller must fail loudly, not log garbage.
        if event_type.__class__ is EventType:
            kind: str = event_type._value_  # the plain value, without Enum's descriptor call
        else:
            try:
                kind = EventType(event_type)._value_
            except ValueError:
                raise AuditError(f"unknown audit event type {event_type!r}") from None
        actor_type = actor.type
        if actor_type not in ACTOR_TYPES:
            raise AuditError(f"unknown audit actor type {actor_type!r}")
        if outcome not in OUTCOMES:
            raise AuditError(f"unknown audit outcome {outcome!r}")
        ctx = ctx or _NO_CONTEXT
        try:
            # A new dict: the caller's is never changed. The common event's details need no
            # scrubbing and are written in one pass (core/audit.py `plain_details_text`).
            plain = plain_details_text(details) if details else "{}"
            if plain is not None:
                scrubbed, details_json = dict(details) if details else {}, plain
            else:
                scrubbed, flat = scrub_flat(details) if details else ({}, True)
                details_json = (
                    canonical_flat_details(scrubbed) if flat else canonical_details(scrubbed)
                )
            if "\\u0000" in details_json:  # a NUL somewhere in it (core/audit.py)
                scrubbed = storable_details(scrubbed)
                details_json = canonical_details(scrubbed)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit event {kind}: details are not JSON: {exc}") from exc
        actor_id, target = _clip(actor.id, 300), _clip(target, 500)
        client_ip, user_agent = _clip(ctx.client_ip, 64), _clip(ctx.user_agent, 500)
        request_id = _clip(ctx.request_id, 64)
        ts = self._clock.now()
        values = (
            ts, kind, actor_type, actor_id, target, outcome, client_ip, user_agent, request_id,
            details_json,
        )  # fmt: skip
        # The canonical form after `seq` (core/audit_chain.py `canonical_tail`), built here
        # from the fields at hand rather than through the keyword call; the text of the
        # first five, the same for a client's every token, is remembered (`event_tail`).
        head = (kind, actor_type, actor_id, target, outcome)
        tail = event_tail(ts, head, client_ip, user_agent, request_id, details_json)
        return _Prepared(values, tail, scrubbed)

    def _append(self, events: list[_Prepared]) -> None:
        # Each follower is woken once, by the leader that wrote its events, and the lead
        # passes to one queued caller: waking every waiter after every batch (a condition's
        # notify_all) cost each queued caller a wake-up and a GIL hand-over per batch.
        me = _Waiter(events, batch_part(events) if self._pg_held is not None else "")
        with self._mutex:
            self._queue.append(me)
            me.lead = not self._writing
            self._writing = True
        if not me.lead:
            self._follow(me)
            if me.done:
                if me.error is not None:
                    raise _as_audit_error(me.error)
                return
        if self._pg_held is not None:
            batch, error = self._lead_locked(me, self._pg_held)
        else:
            batch, error = self._lead(me)
        self._finish(me, batch, error)
        if error is not None:
            raise _as_audit_error(error)
        self.notify_listeners()

    def _take(self) -> list[_Waiter]:
        with self._mutex:
            batch, self._queue = self._queue, []
        return batch

    def _lead(self, me: _Waiter) -> tuple[list[_Waiter], BaseException | None]:
        """SQLite: writes the whole queue as one batch."""
        batch = self._take()
        try:
            started = time.perf_counter()
            self._write(written := [e for w in batch for e in w.events])
            self._observe(written, seconds=time.perf_counter() - started)
        except BaseException as exc:  # every waiter must learn the outcome, whatever it was
            return batch, exc
        return batch, None

    def _lead_locked(
        self, me: _Waiter, held: HeldAppender
    ) -> tuple[list[_Waiter], BaseException | None]:
        """PostgreSQL: takes the chain lock first and only then the queue as its batch, so
        whatever arrived while another process held the lock (its whole turn, flush
        included) goes into this flush instead of waiting for the next one. The lock is
        held from before the batch is taken until its commit is flushed, as before; each
        caller is still answered only after the commit of its own events."""
        batch: list[_Waiter] = []
        try:
            started = time.perf_counter()
            with held.locked() as append:
                batch = self._take()
                append([w.part for w in batch])
            seconds = time.perf_counter() - started
            self._observe([e for w in batch for e in w.events], seconds=seconds)
        except BaseException as exc:
            if not batch:
                # Failed (or interrupted) before it collected anything: only this caller's
                # attempt failed; the callers queued behind get the lead and try themselves.
                with self._mutex:
                    if me in self._queue:
                        self._queue.remove(me)
                batch = [me]
            return batch, exc
        return batch, None

    def _finish(self, me: _Waiter, batch: list[_Waiter], error: BaseException | None) -> None:
        """Tells every caller of `batch` its outcome and hands the lead on."""
        with self._mutex:
            for waiter in batch:
                waiter.done, waiter.error = True, error
            successor = self._pass_lead()
        for waiter in batch:
            if waiter is not me:
                waiter.wake.release()
        if successor is not None:
            successor.wake.release()

    def _pass_lead(self) -> _Waiter | None:
        """Under the mutex: the queued caller that writes the next batch, or none queued."""
        if not self._queue:
            self._writing = False
            return None
        successor = self._queue[0]
        successor.lead = True
        return successor

    def _follow(self, me: _Waiter) -> None:
        try:
            me.wake.acquire()
        except BaseException:
            # Interrupted (KeyboardInterrupt in the main thread): leave the queue, and pass
            # on the lead if it was handed here, or the callers behind would wait forever.
            with self._mutex:
                if me in self._queue:
                    self._queue.remove(me)
                successor = self._pass_lead() if me.lead and not me.done else None
            if successor is not None:
                successor.wake.release()
            raise

    def notify_listeners(self) -> None:
        """Tells the sinks new events are committed (also called by the unit of work)."""
        for listener in self.listeners:
            listener()

    def _observe(self, events: list[_Prepared], *, seconds: float | None = None) -> None:
        """Tells the observers (metrics) of events that are written; never raises, so a
        metric cannot turn a committed append into a failed one."""
        try:
            if seconds is not None:
                for timer in self.write_timers:
                    timer(seconds)
            if self.observers:
                batch = [(e.values[1], e.values[3], e.details or {}) for e in events]
                for observer in self.observers:
                    observer(batch)
        except Exception as exc:  # counting is best effort; the events are in the chain
            log.warning("audit observers failed: %s", type(exc).__name__)

    def _write(self, events: list[_Prepared]) -> None:
        # SQLite only (PostgreSQL: `_lead_locked`). In the writers' turn (units of work,
        # other processes) rather than in SQLite's sleeping busy handler. Safe from
        # deadlock: no caller holds the turn while it waits for an append (inside a unit of
        # work `record` queues into the unit instead, so `_write` never runs inside one and
        # takes the turn itself).
        # On the driver connection itself: SQLAlchemy's `Connection` around a three-statement
        # transaction cost more CPU than the database did (module docstring of
        # audit_sqlite_append); a SQLite file's appends also keep their connection
        # (`HeldWriter`) instead of a pool checkout and check-in each.
        if self._held is not None:
            writer, turn = self._held
            with turn:
                writer.append(self._engine, self._insert_sql, events)
            return
        with writer_serial(self._engine), self._engine.connect() as conn:
            sqlite_append(conn.connection.driver_connection, self._insert_sql, events)

    def _insert(self, conn: Connection, events: list[_Prepared]) -> tuple[int, str]:
        # On the caller's transaction, but through its driver connection (the lock and the
        # tail read already go that way on PostgreSQL): the same statements, less overhead.
        driver: Any = conn.connection.driver_connection
        if self._pg:
            seq, prev = self.lock_tail(conn)
            cursor = driver.cursor()
        else:
            cursor = driver.cursor()
            # The write lock, in case the caller's transaction has not taken it yet.
            cursor.execute(TAKE_SQLITE_WRITE_LOCK)
            seq, prev = sqlite_tail(cursor)
        try:
            rows = chain_rows(events, seq, prev)
            if len(rows) == 1:
                cursor.execute(self._insert_sql, rows[0])
            else:
                cursor.executemany(self._insert_sql, rows)
        finally:
            cursor.close()
        return rows[-1][0], rows[-1][-1]

    def record_in(self, conn: Connection, events: Sequence[PendingEvent]) -> AppendedIn:
        """Appends inside a transaction the caller opened with `locked()`, so the events
        commit or roll back together with the caller's own changes (archiving, units of
        work). Returns what it appended; the caller calls its `committed()` once its
        transaction has committed, and only then are the events counted (metrics). Raises
        `AuditError`; the caller's transaction must then roll back."""
        prepared = [
            self._prepare(e.event_type, e.actor, e.target, e.outcome, e.details, e.ctx)
            for e in events
        ]
        if not prepared:
            raise AuditError("record_in needs at least one event")
        try:
            tail = self._insert(conn, prepared)
        except database_errors() as exc:
            # The driver's own errors too: on PostgreSQL the lock and tail read go through the
            # raw psycopg connection, past SQLAlchemy's translation.
            raise _as_audit_error(exc) from exc
        return AppendedIn(tail[0], tail[1], lambda: self._observe(prepared))

    def lock_tail(self, conn: Connection) -> tuple[int, str]:
        """Takes the append lock (held until the transaction ends) and returns
        (next seq, previous hash)."""
        if self._pg:
            # A unit of work holds the lock from here to COMMIT: one round trip, not two.
            tail = lock_and_read_tail(conn.connection.driver_connection)
            if tail is not None:
                return tail[0] + 1, tail[1]
        else:
            # A write statement makes SQLite take its write lock now, so reading the tail
            # and inserting cannot interleave with another writer (any process).
            conn.exec_driver_sql(TAKE_SQLITE_WRITE_LOCK)
            last = conn.exec_driver_sql(
                "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
            ).first()
            if last is not None:
                return int(last[0]) + 1, str(last[1])
        anchor = self.anchor_in(conn)
        return anchor.first_seq, anchor.prev_hash

    @contextlib.contextmanager
    def locked(self) -> Iterator[Connection]:
        """A transaction holding the append lock (for archiving)."""
        try:
            with self._engine.connect() as conn, conn.begin():
                self.lock_tail(conn)
                yield conn
        except database_errors() as exc:
            raise AuditError("the audit log cannot be read", hint=_driver_error(exc)) from exc

    # ------------------------------------------------------------------ reading

    def anchor(self) -> Anchor:
        with self.reading() as conn:
            return self.anchor_in(conn)

    def anchor_in(self, conn: Connection) -> Anchor:
        row = conn.execute(
            select(audit_anchor.c.first_seq, audit_anchor.c.prev_hash, audit_anchor.c.archive_file)
            .order_by(audit_anchor.c.id)
            .limit(1)
        ).first()
        if row is None:
            return Anchor(1, GENESIS_HASH)
        return Anchor(int(row[0]), str(row[1]), row[2])

    def head(self) -> AuditEvent | None:
        with self.reading() as conn:
            row = conn.execute(
                select(*columns()).order_by(audit_events.c.seq.desc()).limit(1)
            ).first()
        return row_event(row) if row is not None else None

    def count(self) -> int:
        with self.reading() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())

    def search(
        self,
        where: AuditFilter = AuditFilter(),  # noqa: B008 - frozen, so a shared default is safe
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[AuditEvent]:
        query = filtered(select(*columns()), where)
        if after_seq is not None:
            query = query.where(audit_events.c.seq > after_seq)
        if before_seq is not None:
            query = query.where(audit_events.c.seq < before_seq)
        order = audit_events.c.seq.desc() if newest_first else audit_events.c.seq.asc()
        with self.reading() as conn:
            rows = conn.execute(query.order_by(order).limit(limit)).all()
        return [row_event(row) for row in rows]

    def iter_events(
        self,
        where: AuditFilter = AuditFilter(),  # noqa: B008
        *,
        after_seq: int = 0,
        until_seq: int | None = None,
        chunk: int = 5_000,
    ) -> Iterator[AuditEvent]:
        """Every matching event in chain order, read in chunks (constant memory)."""
        while True:
            events = self.search(where, after_seq=after_seq, limit=chunk, newest_first=False)
            for event in events:
                if until_seq is not None and event.seq > until_seq:
                    return
                yield event
            if len(events) < chunk:
                return
            after_seq = events[-1].seq

    def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Walks the live chain from the anchor to the newest event."""
        with self.reading() as conn:
            anchor = self.anchor_in(conn)
        verifier = ChainVerifier(first_seq=anchor.first_seq, prev_hash=anchor.prev_hash)
        cols = ", ".join(COLUMNS)
        mark = "%s" if self._pg else "?"
        sql = f"SELECT {cols} FROM audit_events WHERE seq > {mark} ORDER BY seq LIMIT {mark}"  # noqa: S608
        # Read from the very bottom, not from the anchor: rows put back below it must show.
        after = -(2**62)
        while True:
            with self.reading() as conn:
                rows = conn.exec_driver_sql(sql, (after, _VERIFY_CHUNK)).all()
            if not rows:
                break
            if not verifier.feed(rows):
                break
            after = rows[-1][0]
            if progress is not None:
                progress(verifier.checked)
            if len(rows) < _VERIFY_CHUNK:
                break
        return verifier.report()

    def check_head(self, head: str) -> str | None:
        """Compares a head recorded earlier ("SEQ:HASH") with the table: a hash chain alone
        cannot notice events cut off its end, a remembered head can. None when it matches."""
        seq_text, _, expected = head.partition(":")
        try:
            seq = int(seq_text)
        except ValueError:
            raise InvalidInput(f"head {head!r} is not SEQ:HASH") from None
        if len(expected) != 64:
            raise InvalidInput(f"head {head!r} is not SEQ:HASH (a 64-digit hex hash)")
        with self.reading() as conn:
            anchor = self.anchor_in(conn)
            row = conn.execute(select(audit_events.c.hash).where(audit_events.c.seq == seq)).first()
            last = conn.execute(select(func.max(audit_events.c.seq))).scalar()
        if row is not None:
            return None if row[0] == expected else f"event {seq} no longer has hash {expected}"
        if seq == anchor.first_seq - 1:
            return None if anchor.prev_hash == expected else f"archived event {seq} differs"
        if seq < anchor.first_seq:
            return None  # archived: `verify --archive` checks it
        return f"event {seq} existed but the chain now ends at {last or anchor.first_seq - 1}"

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise AuditError("the audit log cannot be read", hint=_driver_error(exc)) from exc


def _clip(value: str | None, size: int) -> str | None:
    # Column sizes are limits of the schema; an over-long user agent must not lose the event.
    # Nor may a NUL in it (core/audit.py `storable_text`). Five per event: the common value
    # (short, no NUL) is answered before any further call.
    if value is None or (len(value) <= size and "\x00" not in value):
        return value
    value = storable_text(value)
    return value if value is None or len(value) <= size else value[: size - 1] + "…"


def _as_audit_error(exc: BaseException) -> BaseException:
    if isinstance(exc, AuditError) or not isinstance(exc, Exception):
        return exc
    # The message reaches HTTP clients (503); the driver's words go to the hint (CLI, logs),
    # never the SQL statement and its parameters.
    unavailable = isinstance(storage_error(exc, "audit"), StorageUnavailable)
    kind = AuditUnavailable if unavailable else AuditError
    error = kind("the audit event could not be written, so nothing was done",
                 hint=_driver_error(exc))  # fmt: skip
    error.__cause__ = exc
    return error


def _driver_error(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()
    return (text[0] if text else type(original).__name__)[:200]
