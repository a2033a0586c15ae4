"""The PostgreSQL append (adapters/audit_pg_append.py, migration 0019): one round trip per
batch whatever other writers did, hashes computed on the server equal to the canonical form's,
and an append whose backend dies is an error with nothing written. The hash test runs on both
databases (SQLite's append hashes in Python: the same events must verify on either)."""

from __future__ import annotations

import contextlib
import multiprocessing
import secrets
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from idhub.adapters._pg_deadline import session_ended
from idhub.adapters.audit_pg_append import ADVISORY_LOCK_KEY
from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import create_db_engine
from idhub.bootstrap import Services
from idhub.config import DatabaseSettings
from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.clock import FrozenClock, SystemClock
from idhub.errors import AuditError
from tests.db_reset import empty_postgres

PG_HOST = "127.0.0.1:5432"


class TurnCounter:
    """A TCP relay to the PostgreSQL server that counts round trips: each time the client
    sends after the server has answered (or sends first) is one turn of the conversation."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.turns = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(("127.0.0.1", 5432))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        answered = True  # the client speaks first
        with client, server:
            while not self._stop.is_set():
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        with self._lock:
                            if answered:
                                self.turns += 1
                            answered = False
                        server.sendall(data)
                    else:
                        answered = True
                        client.sendall(data)

    def close(self) -> None:
        # The listener is closed only once the accept loop has seen the stop (within its
        # 0.2 s timeout): closed under a blocked accept() it raised EBADF in that thread.
        self._stop.set()
        self._acceptor.join(5)
        self._listener.close()


@pytest.fixture
def pg_url(pg_database: str, pg_reset_engine: Engine) -> str:
    """An empty, migrated PostgreSQL database (these tests are about PostgreSQL only)."""
    empty_postgres(pg_reset_engine)
    return pg_database


@pytest.fixture
def relay() -> Iterator[TurnCounter]:
    counter = TurnCounter()
    yield counter
    counter.close()


def _advisory_pids(conn: Connection, *, granted: bool) -> list[int]:
    """The backends of this database holding (`granted`) or waiting for an advisory lock (the
    chain lock here)."""
    return [
        int(pid)
        for pid in conn.execute(
            text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted = :granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"granted": granted},
        ).scalars()
    ]


def _lock_waiters(conn: Connection) -> list[int]:
    return _advisory_pids(conn, granted=False)


def _wait_until(check: Any, what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@dataclass
class LogWithAnEvent:
    """A PostgreSQL log holding one event, and an autocommit engine beside it for the test's
    own sessions (holding the chain lock, looking at pg_locks, ending backends)."""

    engine: Engine
    log: SqlAuditLog
    admin: Engine
    count: int  # events in the log before the test's own


@contextlib.contextmanager
def a_log_with_an_event(pg_url: str) -> Iterator[LogWithAnEvent]:
    engine = create_db_engine(DatabaseSettings(url=pg_url))
    log = SqlAuditLog(engine, SystemClock())
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        log.record(EventType.SYNC_RUN, actor=Actor.system("before"))
        yield LogWithAnEvent(engine, log, admin, log.count())
    finally:
        engine.dispose()
        admin.dispose()


@dataclass
class ChainLockHeld:
    """`LogWithAnEvent`'s log while `holder` (another session) holds the chain lock in an
    open transaction, as another process's turn does; `watcher` is a third session."""

    engine: Engine
    log: SqlAuditLog
    holder: Connection
    watcher: Connection
    count: int

    def release(self) -> None:
        self.holder.execute(text("ROLLBACK"))


@contextlib.contextmanager
def holding_the_chain_lock(pg_url: str) -> Iterator[ChainLockHeld]:
    with (
        a_log_with_an_event(pg_url) as base,
        base.admin.connect() as holder,
        base.admin.connect() as watcher,
    ):
        holder.execute(text("BEGIN"))
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        yield ChainLockHeld(base.engine, base.log, holder, watcher, base.count)


def test_an_append_is_two_round_trips_after_another_process_appended(
    pg_url: str, relay: TurnCounter
) -> None:
    """Two logs (as two worker processes would) take turns: every append finds a tail it did
    not write, and is still two round trips: the chain lock, then the batch with its COMMIT
    (the leader collects its batch between the two, `_lead_locked`; one round trip from 0019
    to 0020, three before 0019)."""
    counted = create_db_engine(
        DatabaseSettings(url=pg_url.replace(PG_HOST, f"127.0.0.1:{relay.port}"))
    )
    other = create_db_engine(DatabaseSettings(url=pg_url))
    mine, theirs = SqlAuditLog(counted, SystemClock()), SqlAuditLog(other, SystemClock())
    try:
        # Connecting, and psycopg preparing the statement on its sixth execution (one extra
        # round trip, once per connection), happen here.
        for _ in range(6):
            mine.record(EventType.TOKEN_ISSUED, actor=Actor("client", "warm-up"))
        for i in range(5):
            theirs.record(EventType.TOKEN_ISSUED, actor=Actor("client", "theirs"), target=str(i))
            before = relay.turns
            mine.record_many(
                [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "mine"), f"{i}-{k}")
                 for k in range(3)]
            )  # fmt: skip
            assert relay.turns - before == 2
    finally:
        counted.dispose()
        other.dispose()
    report = SqlAuditLog(create_db_engine(DatabaseSettings(url=pg_url)), SystemClock())
    assert report.verify().ok


def test_server_side_hashes_match_the_canonical_form(services: Services) -> None:
    """Text the server could read differently from Python: backslashes (a `::bytea` cast
    would take them for escapes), quotes, non-ASCII in every field, control characters,
    JSON-looking strings, None fields, odd floats; `verify` recomputes every hash in Python."""
    log = SqlAuditLog(services.engine, FrozenClock(1_764_620_000.123456789))
    awkward = [
        "back\\slash \\x41 \\\\ \\000",
        "quote \" ' `",
        "Zürich 北京 💳 e\u0301",
        "tab\tnew\nline \x1f \u2028",
        '{"json": [1, 2]}',
    ]
    events = [
        PendingEvent(
            EventType.TOKEN_ISSUED,
            actor=Actor("client", text_),
            target=text_,
            details={"k": text_, text_: [text_, None, 1.5e-7, 10**20], "n": -0.0},
            ctx=RequestContext(client_ip="::1", user_agent=text_, request_id=text_),
        )
        for text_ in awkward
    ]
    log.record_many(events)
    log.record(EventType.SYNC_RUN, actor=Actor.system("sync"))  # None target, no context
    report = log.verify()
    assert report.ok, report.problem
    assert report.checked >= len(awkward) + 1


def test_the_function_takes_the_adapters_lock(pg_url: str) -> None:
    """Units of work and archiving take the lock from the client, the function on the
    server: one key, or two writers could link to the same tail."""
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            body = conn.execute(
                text("SELECT prosrc FROM pg_proc WHERE proname = 'idhub_audit_append'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert f"pg_advisory_xact_lock({ADVISORY_LOCK_KEY})" in body


def test_an_append_whose_backend_dies_writes_nothing_and_the_next_one_works(
    pg_url: str,
) -> None:
    """The append waits inside the function for the lock another session holds; its backend
    is terminated (as a crash or an operator would): the caller gets an AuditError, nothing
    of its batch is in the chain, and the pool's next connection appends normally (it is not
    left in autocommit, nor in a broken state)."""
    outcome: list[Any] = []
    with holding_the_chain_lock(pg_url) as held:
        log = held.log

        def append() -> None:
            try:
                log.record_many(
                    [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "lost"), str(k))
                     for k in range(3)]
                )  # fmt: skip
                outcome.append(None)
            except AuditError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=append)
        worker.start()
        waiting: list[int] = []
        deadline = time.monotonic() + 1.0  # inside the 1.5 s statement timeout
        while not waiting and time.monotonic() < deadline:
            waiting = _lock_waiters(held.watcher)
        assert waiting, "the append never queued on the lock"
        held.watcher.execute(text("SELECT pg_terminate_backend(:p)"), {"p": waiting[0]})
        worker.join(5)
        held.release()
        assert len(outcome) == 1 and isinstance(outcome[0], AuditError)
        assert log.count() == held.count
        log.record(EventType.SYNC_RUN, actor=Actor.system("after"))
        # Every pooled connection is back in transactions: a unit's statements still roll
        # back together (an autocommit connection would have kept the first insert).
        with held.engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
        report = log.verify()
        assert report.ok, report.problem
        assert log.count() == held.count + 1


class _Interrupted(BaseException):
    """What a signal handler raises in the main thread, as KeyboardInterrupt would."""


def test_a_caller_interrupted_while_queued_leaves_the_queue_and_the_others_finish(
    services: Services,
) -> None:
    """The main thread queues behind a batch in flight and is interrupted there: its event
    is not written later behind its back, and the caller queued after it still gets its
    event written and its answer (the queue is not left waiting for it)."""
    log = SqlAuditLog(services.engine, SystemClock())
    gate, writing = threading.Event(), threading.Event()
    if log._pg_held is None:
        real_write = log._write

        def held_write(events: Any) -> None:
            writing.set()
            gate.wait(10)
            real_write(events)

        log._write = held_write  # type: ignore[method-assign]
    else:
        # PostgreSQL: the leader holds the chain lock and has collected its batch.
        real_locked = log._pg_held.locked

        @contextlib.contextmanager
        def held_locked() -> Iterator[Any]:
            with real_locked() as append:

                def held_append(events: Any) -> Any:
                    writing.set()
                    gate.wait(10)
                    return append(events)

                yield held_append

        log._pg_held.locked = held_locked  # type: ignore[method-assign]
    count = log.count()
    leader = threading.Thread(
        target=log.record, args=(EventType.SYNC_RUN,), kwargs={"actor": Actor.system("lead")}
    )
    leader.start()
    assert writing.wait(10)
    behind = threading.Thread(
        target=lambda: (
            time.sleep(0.3),  # queued after the main thread
            log.record(EventType.SYNC_RUN, actor=Actor.system("behind")),
        )
    )

    def interrupt(_signum: int, _frame: Any) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    main = threading.get_ident()
    threading.Timer(0.6, lambda: signal.pthread_kill(main, signal.SIGUSR1)).start()
    threading.Timer(0.9, gate.set).start()
    behind.start()
    try:
        with pytest.raises(_Interrupted):
            log.record(EventType.SYNC_RUN, actor=Actor.system("interrupted"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    leader.join(10)
    behind.join(10)
    assert not leader.is_alive() and not behind.is_alive()
    actors = [e.actor_id for e in log.search(newest_first=False)][count:]
    assert sorted(actors) == ["behind", "lead"]
    assert log.verify().ok


def test_a_batch_goes_in_with_one_insert_statement(pg_url: str) -> None:
    """Migration 0020: the function inserts a batch with one INSERT ... SELECT (0019 ran one
    INSERT per event while holding the chain lock). A statement-level trigger counts the
    INSERT statements; the chain written that way still verifies, and continues after it."""
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text("CREATE TABLE insert_statements (n int)"))
        conn.execute(
            text(
                "CREATE FUNCTION count_insert() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN INSERT INTO insert_statements VALUES (1); RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER count_insert AFTER INSERT ON audit_events "
                "FOR EACH STATEMENT EXECUTE FUNCTION count_insert()"
            )
        )
    engine = create_db_engine(DatabaseSettings(url=pg_url))
    log = SqlAuditLog(engine, SystemClock())
    try:
        log.record_many(
            [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "c"), str(k)) for k in range(5)]
        )
        log.record(EventType.TOKEN_ISSUED, actor=Actor("client", "c"), target="after")
        with admin.begin() as conn:
            statements = conn.execute(text("SELECT count(*) FROM insert_statements")).scalar()
            seqs = conn.execute(text("SELECT seq FROM audit_events ORDER BY seq")).scalars().all()
            conn.execute(text("DROP TRIGGER count_insert ON audit_events"))
            conn.execute(text("DROP FUNCTION count_insert()"))
            conn.execute(text("DROP TABLE insert_statements"))
        assert statements == 2  # one per append, whatever its size
        assert seqs == [1, 2, 3, 4, 5, 6]
        report = log.verify()
        assert report.ok, report.problem
        assert report.checked == 6
    finally:
        engine.dispose()
        admin.dispose()


def test_migration_0020_downgrades_to_the_row_by_row_append_and_back() -> None:
    """Both bodies of the function link the same chain: events appended under 0020, then
    under 0019 after a downgrade, then under 0020 again verify as one chain."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from idhub.adapters.database import MIGRATIONS_DIR, apply_migrations

    name = f"idhub_test_0020_{secrets.token_hex(4)}"
    admin = create_engine(f"postgresql+psycopg://postgres@{PG_HOST}/test",
                          isolation_level="AUTOCOMMIT")  # fmt: skip
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@{PG_HOST}/{name}"
    engine = create_db_engine(DatabaseSettings(url=url))
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))

    def migrate(step: Any, target: str) -> str:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, target)
            return str(
                conn.execute(
                    text("SELECT prosrc FROM pg_proc WHERE proname = 'idhub_audit_append'")
                ).scalar_one()
            )

    try:
        apply_migrations(engine)
        log = SqlAuditLog(engine, SystemClock())
        for step, target, marker in (
            (command.upgrade, "head", "jsonb_array_elements"),
            (command.downgrade, "0019", "FOR v_event IN"),
            (command.upgrade, "0020", "jsonb_array_elements"),
        ):
            body = migrate(step, target)
            assert marker in body
            assert f"pg_advisory_xact_lock({ADVISORY_LOCK_KEY})" in body
            log.record_many(
                [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", target), str(k))
                 for k in range(3)]
            )  # fmt: skip
        report = log.verify()
        assert report.ok, report.problem
        assert report.checked == 9
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_what_queues_while_the_leader_waits_for_the_lock_goes_in_its_flush(pg_url: str) -> None:
    """Another process holds the chain lock (its turn, flush included); this process's leader
    waits for it, and two more callers queue meanwhile. The leader takes its batch only once
    it holds the lock, so all three events go in one append and one commit (with the batch
    taken before the lock wait, as until 0020, the two behind waited for a second turn)."""
    appends: list[float] = []
    with holding_the_chain_lock(pg_url) as held:
        log = held.log
        log.write_timers.append(appends.append)
        callers = [
            threading.Thread(
                target=log.record,
                args=(EventType.TOKEN_ISSUED,),
                kwargs={"actor": Actor("client", name)},
            )
            for name in ("leader", "second", "third")
        ]
        callers[0].start()
        _wait_until(lambda: len(_lock_waiters(held.watcher)) == 1, "the leader never waited")
        for caller in callers[1:]:
            caller.start()
        _wait_until(
            lambda: sum(1 for w in list(log._queue) if not w.lead) == 2,
            "the other two never queued",
        )
        held.release()
        for caller in callers:
            caller.join(10)
        assert not any(caller.is_alive() for caller in callers)
        assert len(appends) == 1
        assert log.count() == held.count + 3
        report = log.verify()
        assert report.ok, report.problem


def test_a_leader_interrupted_in_the_lock_wait_writes_nothing_and_passes_the_lead(
    pg_url: str,
) -> None:
    """The main thread leads and waits for the chain lock another session holds; a caller
    queues behind it; the main thread is interrupted there (as by KeyboardInterrupt). Its
    event is not written, its connection (and the lock request) is gone, and the caller
    behind takes the lead and gets its event written once the lock is free."""
    with holding_the_chain_lock(pg_url) as held:
        log, watcher = held.log, held.watcher
        behind = threading.Thread(
            target=lambda: (
                _wait_until(lambda: len(_lock_waiters(watcher)) == 1, "no leader waited"),
                log.record(EventType.SYNC_RUN, actor=Actor.system("behind")),
            )
        )

        def interrupt(_signum: int, _frame: Any) -> None:
            raise _Interrupted

        previous = signal.signal(signal.SIGUSR1, interrupt)
        main = threading.get_ident()

        def interrupt_when_queued() -> None:
            _wait_until(
                lambda: any(not w.lead for w in list(log._queue)),
                "the caller behind never queued",
            )
            signal.pthread_kill(main, signal.SIGUSR1)

        behind.start()
        threading.Thread(target=interrupt_when_queued).start()
        try:
            with pytest.raises(_Interrupted):
                log.record(EventType.SYNC_RUN, actor=Actor.system("interrupted"))
        finally:
            signal.signal(signal.SIGUSR1, previous)
        # The caller behind now leads and waits for the lock itself, on its own
        # connection (the interrupted one's backend has let go of its request).
        _wait_until(lambda: len(_lock_waiters(watcher)) == 1, "the caller behind never led")
        held.release()
        behind.join(10)
        assert not behind.is_alive()
        actors = [e.actor_id for e in log.search(newest_first=False)][held.count :]
        assert actors == ["behind"]
        log.record(EventType.SYNC_RUN, actor=Actor.system("after"))
        report = log.verify()
        assert report.ok, report.problem


def _append_from_a_process(url: str, name: str, rounds: int) -> None:
    engine = create_db_engine(DatabaseSettings(url=url))
    log = SqlAuditLog(engine, SystemClock())

    def loop(thread: int) -> None:
        for i in range(rounds):
            log.record_many(
                [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", name), f"{thread}-{i}-{k}")
                 for k in range(3)]
            )  # fmt: skip

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()


def test_two_processes_appending_at_once_write_one_chain(pg_url: str) -> None:
    """Two processes of four threads each (as `serve --workers 2`), each leader holding the
    chain lock on its kept connection while it collects: every event is in the chain once,
    and the chain verifies."""
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=_append_from_a_process, args=(pg_url, name, 40))
        for name in ("one", "two")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert all(worker.exitcode == 0 for worker in workers)
    engine = create_db_engine(DatabaseSettings(url=pg_url))
    try:
        log = SqlAuditLog(engine, SystemClock())
        targets = [(e.actor_id, e.target) for e in log.iter_events()]
        assert len(targets) == len(set(targets)) == 2 * 4 * 40 * 3
        report = log.verify()
        assert report.ok, report.problem
    finally:
        engine.dispose()


def test_a_leader_whose_backend_dies_holding_the_lock_writes_nothing(pg_url: str) -> None:
    """The leader holds the chain lock and has collected its batch when its backend is
    terminated: its callers get AuditError, nothing of the batch is in the chain, the lock
    is free for others at once, and the next append (on a fresh connection) works."""
    with a_log_with_an_event(pg_url) as base:
        log, admin = base.log, base.admin
        assert log._pg_held is not None
        real_locked = log._pg_held.locked

        @contextlib.contextmanager
        def dying_locked() -> Iterator[Any]:
            with real_locked() as append:
                with admin.connect() as killer:
                    (holder,) = _advisory_pids(killer, granted=True)
                    killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": holder})
                yield append

        log._pg_held.locked = dying_locked  # type: ignore[method-assign]
        with pytest.raises(AuditError):
            log.record_many(
                [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "lost"), str(k))
                 for k in range(3)]
            )  # fmt: skip
        log._pg_held.locked = real_locked  # type: ignore[method-assign]
        with admin.connect() as other:
            free = other.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}
            ).scalar_one()
            other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
        assert free is True
        assert log.count() == base.count
        log.record(EventType.SYNC_RUN, actor=Actor.system("after"))
        assert log.count() == base.count + 1
        report = log.verify()
        assert report.ok, report.problem


def test_an_append_whose_commit_fails_is_an_error_with_nothing_written(pg_url: str) -> None:
    """The append's round trips go on the driver connection without a cursor
    (`audit_pg_held._pipelined`): an error raised only at COMMIT (a deferred constraint
    trigger) still reaches the caller, so no token leaves with its event unwritten; nothing
    of the batch stays, and the next append works on a fresh connection."""
    targets, _ = _appends_beside_a_refusing_trigger(pg_url, "refuse_at_commit", at_commit=True)
    assert targets == ["before", "after"]


def _held_driver_connection(log: SqlAuditLog) -> Any:
    held = log._pg_held._held if log._pg_held is not None else None
    assert held is not None, "the appender keeps no connection"
    return held.connection.driver_connection


def test_the_appends_of_a_held_connection_run_one_statement_prepared_on_its_session(
    pg_url: str,
) -> None:
    """The append is a statement prepared on the server once per held connection, its batch
    a parameter (`audit_pg_held.append_locked`): as one simple-protocol message with the
    batch as a literal, the backend lexed, analysed and planned the whole text again for
    every append. The session's prepared statement counts one execution per append, and a
    fresh connection (the held one's backend terminated) prepares its own and appends on."""
    engine = create_db_engine(DatabaseSettings(url=pg_url))
    admin = create_engine(pg_url)
    log = SqlAuditLog(engine, SystemClock())

    def executions(raw: Any) -> list[tuple[str, int]]:
        rows = raw.execute(
            "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE '%idhub_audit_append(%'"
        ).fetchall()
        return [(str(name), int(count)) for name, count in rows]

    try:
        for i in range(7):
            log.record_many(
                [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "c"), f"{i}-{k}")
                 for k in range(i % 3 + 1)]
            )  # fmt: skip
        first = _held_driver_connection(log)
        [(name, count)] = executions(first)
        assert count == 7
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first.info.backend_pid})
        _wait_until(lambda: _ended(first), "the held connection's session to end")
        log.record(EventType.TOKEN_ISSUED, actor=Actor("client", "c"), target="fresh")
        log.record(EventType.TOKEN_ISSUED, actor=Actor("client", "c"), target="fresh 2")
        second = _held_driver_connection(log)
        assert second is not first
        [(fresh_name, fresh_count)] = executions(second)
        assert fresh_name != name
        assert fresh_count == 2
        report = log.verify()
        assert report.ok, report.problem
        assert report.checked == 1 + 2 + 3 + 1 + 2 + 3 + 1 + 2
    finally:
        engine.dispose()
        admin.dispose()


def _appends_beside_a_refusing_trigger(
    pg_url: str, name: str, *, at_commit: bool
) -> tuple[list[str], bool]:
    """With trigger `name` refusing any row whose target is 'refused' (at COMMIT, as a
    deferred constraint trigger, when `at_commit`; else before the insert): appends 'before',
    a batch of 'kept?' and 'refused' (which must raise AuditError), then 'after'. Returns the
    targets stored and whether the chain lock was free afterwards; the chain must verify."""
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.target = 'refused' THEN RAISE EXCEPTION '{name}'; "
                f"END IF; RETURN {'NULL' if at_commit else 'NEW'}; END $$"
            )
        )
        when = "AFTER INSERT" if at_commit else "BEFORE INSERT"
        deferred = "DEFERRABLE INITIALLY DEFERRED " if at_commit else ""
        conn.execute(
            text(
                f"CREATE {'CONSTRAINT ' if at_commit else ''}TRIGGER {name} {when} ON "
                f"audit_events {deferred}FOR EACH ROW EXECUTE FUNCTION {name}()"
            )
        )
    engine = create_db_engine(DatabaseSettings(url=pg_url))
    log = SqlAuditLog(engine, SystemClock())
    try:
        log.record(EventType.TOKEN_ISSUED, actor=Actor("client", "c"), target="before")
        with pytest.raises(AuditError):
            log.record_many(
                [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "c"), t)
                 for t in ("kept?", "refused")]
            )  # fmt: skip
        log.record(EventType.TOKEN_ISSUED, actor=Actor("client", "c"), target="after")
        with admin.begin() as conn:
            targets = conn.execute(text("SELECT target FROM audit_events ORDER BY seq")).all()
            free = conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY}
            ).scalar_one()
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.execute(text(f"DROP TRIGGER {name} ON audit_events"))
            conn.execute(text(f"DROP FUNCTION {name}()"))
        report = log.verify()
        assert report.ok, report.problem
        return [t for (t,) in targets], bool(free)
    finally:
        engine.dispose()
        admin.dispose()


def _ended(raw: Any) -> bool:
    return bool(session_ended(raw))


def test_an_append_refused_by_the_database_is_an_error_and_its_commit_never_runs(
    pg_url: str,
) -> None:
    """The append and its COMMIT go out in one pipeline: when the append itself fails (here a
    trigger refusing a row), the server skips the COMMIT queued behind it, the caller gets
    `AuditError`, nothing of the batch stays, and the next append works."""
    targets, free = _appends_beside_a_refusing_trigger(pg_url, "refuse_now", at_commit=False)
    assert free is True
    assert targets == ["before", "after"]
