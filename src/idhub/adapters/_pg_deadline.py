"""A bound on how long idhub waits for PostgreSQL, whatever state the server is in.

The server-side `statement_timeout` ends slow statements, but a server that is stalled (paused,
swapping, behind a dead network path whose kernel still acknowledges packets) cancels nothing
and answers nothing: without a bound of its own the client thread waits forever and every
request behind it hangs. So:

- every round trip on a connection waits at most `statement_timeout` plus a small margin
  (psycopg's `Connection.wait` takes a timeout; the connection subclass gives it one). Past
  it the connection is closed (its state is unknown) and the call fails with the driver's
  `OperationalError`, which SQLAlchemy takes for a disconnect and `storage_error` for
  "unavailable";
- once the database is taken for stalled (`StallGuard`: a second round trip or connect ran
  out of time with no answer between the two), pooled connections are retired and new ones
  refused at once for a short cool-down, instead of each request spending the deadline or
  the connect timeout on a server that just proved it does not answer; any answer ends the
  cool-down. Refused connections (server down, not stalled) start none: they fail fast by
  themselves, and a restarted server is used at once;
- a pooled connection is checked for life on checkout without a round trip: an idle
  PostgreSQL connection receives nothing unless its session is ending (server shutdown or
  restart, `pg_terminate_backend`, `idle_session_timeout`, a crashed backend: a FATAL
  message or end of file on the socket). So a socket with something to read, or a
  connection psycopg already knows is broken, retires the pool - what a failed ping did -
  and a quiet socket is used as it is. A server that went silent (stalled, network gone)
  fails a ping and a real statement alike only after the deadline, so the ping bought
  nothing there; it cost every checkout a round trip (docs/performance.md, 2026-12-01
  second session).
"""

from __future__ import annotations

import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

from idhub.config import DatabaseSettings

# On top of the statement timeout: the server's own cancel should win when it can answer.
_MARGIN = 0.25
# How long new connections are refused after the database ran out of time: short, so a
# server that comes back is used again at once, and long enough that a stalled one costs
# one connect timeout per second at most, not one per request.
_COOLDOWN = 1.0


class StallGuard:
    """What this process knows about the database not answering; one per engine.

    One round trip that ran out of time proves little on its own: under full load one
    statement can miss the deadline (a bind the server took over a second for, a descheduled
    backend) while every other connection is being answered, and refusing the database for
    a second then turned that one slow answer into thousands of 503s (docs/performance.md,
    2026-12-04). A stalled server answers nobody, so the database is taken for stalled when
    a second round trip or connect runs out of time with no answer in between: under load
    the second comes within milliseconds of the first (every request in flight waits on the
    same server), and a process sending one request at a time pays the deadline once more.
    An answer on any connection ends the cool-down: the server is answering again."""

    def __init__(self, cooldown: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._now = now
        self._until = 0.0
        self._lock = threading.Lock()
        self.stalls = 0  # round trips or connects that ran out of time, since start
        # A round trip or connect ran out of time and none has been answered since. Read
        # without the lock on every answer (`DeadlineConnection.wait`): a stale False there
        # only delays ending a cool-down to the next answer.
        self.unanswered = False

    def stalled(self) -> None:
        with self._lock:
            self.stalls += 1
            if self.unanswered:
                self._until = self._now() + self.cooldown
            self.unanswered = True

    def answered(self) -> None:
        with self._lock:
            self.unanswered = False
            self._until = 0.0

    def check_cooling_down(self) -> bool:
        return self._now() < self._until


class AnswerDeadlinePassed(pg_errors.OperationalError):
    """A round trip got no answer within the deadline; its connection is closed."""


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server is bounded by `answer_deadline`
    seconds (None: unbounded, for migrations)."""

    answer_deadline: float | None = None
    guard: StallGuard | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is None:
            timeout = self.answer_deadline
        try:
            answer = super().wait(gen, interval=interval, timeout=timeout)
        except pg_errors.OperationalError as exc:
            if type(exc).__name__ != "_WaitTimeout":
                raise
            # Half a statement may be on the wire: the connection cannot be reused.
            self.pgconn.finish()
            if self.guard is not None:
                self.guard.stalled()
            raise AnswerDeadlinePassed(
                f"the database did not answer within {timeout:.1f}s"
            ) from None
        guard = self.guard
        if guard is not None and guard.unanswered:
            guard.answered()
        return answer

    def rollback(self) -> None:
        # A connection closed by the deadline above (or lost) has no transaction left: the
        # server rolls back whatever a dropped connection held. Raising here would only make
        # the pool log a traceback when it resets the connection on return; the next
        # checkout's ping finds it closed and replaces it.
        if self.closed:
            return
        try:
            super().rollback()
        except pg_errors.OperationalError:
            if not self.closed:
                raise
            # Closed while rolling back (the deadline again): the same as above.


def install_deadlines(engine: Engine, settings: DatabaseSettings) -> StallGuard:
    """Makes `engine` open `DeadlineConnection`s and refuse to connect while cooling down."""
    guard = StallGuard(cooldown=_COOLDOWN)
    deadline = settings.statement_timeout + _MARGIN if settings.statement_timeout > 0 else None

    @event.listens_for(engine, "do_connect")
    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> DeadlineConnection:
        if guard.check_cooling_down():
            raise pg_errors.OperationalError(
                "the database stopped answering moments ago; not connecting for now"
            )
        try:
            conn = DeadlineConnection.connect(*cargs, **cparams)
        except pg_errors.ConnectionTimeout:
            guard.stalled()
            raise
        if guard.unanswered:
            guard.answered()  # the server took a connection: it answers again
        conn.answer_deadline = deadline
        conn.guard = guard
        return conn

    @event.listens_for(engine, "checkout")
    def checkout(dbapi: Any, _record: Any, _proxy: Any) -> None:
        # Every pooled connection is suspect once one stopped getting answers: retire them
        # all now, rather than let each cost a request the full deadline on its ping.
        if guard.check_cooling_down():
            retire = DisconnectionError("the database stopped answering moments ago")
            retire.invalidate_pool = True
            raise retire
        if not session_ended(dbapi):
            return
        # One session ended: a restart ends them all, so retire the pool as a failed ping
        # did (SQLAlchemy then opens a fresh connection for this checkout).
        ended = DisconnectionError("the database ended this pooled connection's session")
        ended.invalidate_pool = True
        raise ended

    @event.listens_for(engine, "handle_error")
    def only_this_connection(context: Any) -> None:
        # SQLAlchemy takes a closed connection for a disconnect and retires the whole pool,
        # as after a restart. A round trip past the deadline closed only its own connection
        # (`DeadlineConnection.wait`): the others are as good as they were, and if the
        # database proves stalled the checkout above retires them all anyway.
        if isinstance(context.original_exception, AnswerDeadlinePassed):
            context.invalidate_pool_on_disconnect = False

    _GUARDS[engine] = guard
    return guard


def session_ended(conn: psycopg.Connection[Any]) -> bool:
    """True when idle connection `conn` is known or shown to be unusable: psycopg marked it
    closed or broken, or the server sent it something while it was idle (a session's end;
    see the module docstring). A poll with no timeout: no round trip, no wait."""
    if conn.closed or conn.broken:
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def unfit_to_reuse(guard: StallGuard | None, conn: psycopg.Connection[Any]) -> bool:
    """What the pool's checkout refuses a connection for (`install_deadlines`), for one held
    out of the pool between uses (the audit appender's, the lone readers'): the database
    cooling down after a stall, or this connection's session ended."""
    return (guard is not None and guard.check_cooling_down()) or session_ended(conn)


def stall_guard(engine: Engine) -> StallGuard | None:
    """The engine's guard (None for SQLite), for health reports and metrics."""
    return _GUARDS.get(engine)


_GUARDS: weakref.WeakKeyDictionary[Engine, StallGuard] = weakref.WeakKeyDictionary()
