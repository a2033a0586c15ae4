"""Group commit of units of work (adapters/unit_group.py): concurrent units of work share one
transaction, one append lock (PostgreSQL's advisory lock, SQLite's write lock) and one COMMIT,
and still each change stands exactly with its event; several processes still form one chain.
Grouping is the default on PostgreSQL; SQLite can group too (`group=True`), and every test runs
on both.

The grouping tests make the grouping certain instead of hoping for it: the first unit's block
waits until the others have joined its group, and the group's counters say how many commits
the units took. Failures are real: a trigger makes the database refuse one member's audit row.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import create_db_engine
from idhub.adapters.db import audit_events, revoked_tokens
from idhub.adapters.token_store import SqlTokenStore
from idhub.adapters.unit_of_work import SqlUnitOfWork
from idhub.bootstrap import Services
from idhub.config import DatabaseSettings
from idhub.core.audit import Actor, EventType
from idhub.core.clock import SystemClock
from idhub.errors import AuditError

MEMBERS = 6


@pytest.fixture
def services(services: Services) -> Services:
    """The suite's services with grouping on, on SQLite as well (the default there is off)."""
    services.__dict__["unit_of_work"] = SqlUnitOfWork(
        services.engine, services.audit_log, group=True
    )
    return services


def _revoke_in_unit(uow: Any, tokens: SqlTokenStore, jti: str, target: str = "x") -> None:
    """One unit of work: a change (a revoked jti) and its event."""
    with uow.atomic() as tx:
        tokens.revoke_jti(jti, expires_at=time.time() + 60, now=time.time())
        tx.record(EventType.TOKEN_REVOKED, actor=Actor("client", "group"), target=target)


def _rows(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(select(revoked_tokens.c.jti))}


def _events(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())


def _one_group(services: Services, blocks: list[Callable[[], None]]) -> list[BaseException | None]:
    """Runs `blocks` (each opening one unit of work) in threads such that they all join one
    group: the first one's unit waits inside its block until the others have joined."""
    groups = services.unit_of_work.groups  # type: ignore[attr-defined]
    assert groups is not None
    outcome: list[BaseException | None] = [None] * len(blocks)
    inside = threading.Event()

    def run(i: int) -> None:
        try:
            blocks[i]()
        except BaseException as exc:  # collected for the assertions
            outcome[i] = exc

    def first() -> None:
        with services.unit_of_work.atomic():
            inside.set()
            deadline = time.monotonic() + 20
            while groups.joined() < len(blocks) and time.monotonic() < deadline:
                time.sleep(0.005)
            blocks[0]()  # joins the unit this thread holds open (nested atomic)

    threads = [threading.Thread(target=lambda: run_first())]

    def run_first() -> None:
        try:
            first()
        except BaseException as exc:
            outcome[0] = exc

    threads[0].start()
    assert inside.wait(10)
    threads += [threading.Thread(target=run, args=(i,)) for i in range(1, len(blocks))]
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    return outcome


@contextlib.contextmanager
def _refusing_target(engine: Engine, target: str) -> Iterator[None]:
    """The database refuses an audit row with this target (and only that row)."""
    if engine.dialect.name == "sqlite":
        create = [
            "CREATE TRIGGER idhub_refuse_target BEFORE INSERT ON audit_events "
            f"WHEN NEW.target = '{target}' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ]
        drop = "DROP TRIGGER idhub_refuse_target"
    else:
        create = [
            "CREATE OR REPLACE FUNCTION idhub_refuse_target() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN IF NEW.target = '{target}' THEN "
            "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER idhub_refuse_target BEFORE INSERT ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION idhub_refuse_target()",
        ]
        drop = "DROP TRIGGER idhub_refuse_target ON audit_events"
    with engine.begin() as conn:
        for statement in create:
            conn.execute(text(statement))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(drop))


def test_concurrent_units_commit_together(services: Services) -> None:
    groups = services.unit_of_work.groups  # type: ignore[attr-defined]
    tokens = services.token_store
    before = groups.commits
    outcome = _one_group(
        services,
        [
            lambda i=i: _revoke_in_unit(services.unit_of_work, tokens, f"g-{i}")
            for i in range(MEMBERS)
        ],  # type: ignore[misc]
    )
    assert outcome == [None] * MEMBERS
    assert groups.commits - before == 1  # six requests, one transaction, one flush
    assert _rows(services.engine) == {f"g-{i}" for i in range(MEMBERS)}
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.checked == MEMBERS


def test_a_failing_batch_fails_every_member_and_keeps_the_chain(services: Services) -> None:
    tokens = services.token_store
    services.audit.record(EventType.SYNC_RUN, actor=Actor.system())
    blocks = [
        lambda i=i: _revoke_in_unit(
            services.unit_of_work, tokens, f"f-{i}", target="poison" if i == 3 else "x"
        )
        for i in range(MEMBERS)
    ]
    with _refusing_target(services.engine, "poison"):
        outcome = _one_group(services, blocks)  # type: ignore[arg-type]
    # Every member was told "nothing was done" (the web layer answers 503), each with an
    # exception of its own.
    assert all(isinstance(exc, AuditError) for exc in outcome), outcome
    assert len({id(exc) for exc in outcome}) == MEMBERS
    assert _rows(services.engine) == set()  # no change without its event
    assert _events(services.engine) == 1  # no event of the batch, not half of it
    report = services.audit_log.verify()
    assert report.ok, report.problem
    # The next unit of work is an ordinary one.
    _revoke_in_unit(services.unit_of_work, tokens, "after")
    assert _rows(services.engine) == {"after"}
    assert services.audit_log.verify().ok


def test_a_member_whose_block_raises_fails_alone(services: Services) -> None:
    tokens = services.token_store

    def broken() -> None:
        with services.unit_of_work.atomic() as tx:
            tokens.revoke_jti("broken", expires_at=time.time() + 60, now=time.time())
            tx.record(EventType.TOKEN_REVOKED, actor=Actor("client", "group"), target="b")
            raise LookupError("the request's own failure")

    blocks: list[Callable[[], None]] = [
        lambda i=i: _revoke_in_unit(services.unit_of_work, tokens, f"m-{i}")  # type: ignore[misc]
        for i in range(MEMBERS - 1)
    ]
    blocks.insert(2, broken)
    outcome = _one_group(services, blocks)
    assert isinstance(outcome[2], LookupError)
    assert [exc for i, exc in enumerate(outcome) if i != 2] == [None] * (MEMBERS - 1)
    assert _rows(services.engine) == {f"m-{i}" for i in range(MEMBERS - 1)}
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.checked == MEMBERS - 1


# ------------------------------------------------------------------ several processes

THREADS = 4
PER_THREAD = 25


def _replica(url: str, name: str, start: Any) -> None:
    """A replica of its own (engine, log, unit of work), `THREADS` threads each running
    units of work and standalone appends at once."""
    engine = create_db_engine(DatabaseSettings(url=url))
    log = SqlAuditLog(engine, SystemClock())
    uow = SqlUnitOfWork(engine, log, group=True)
    tokens = SqlTokenStore(engine)

    def work(t: int) -> None:
        start.wait(30)
        for i in range(PER_THREAD):
            _revoke_in_unit(uow, tokens, f"{name}-{t}-{i}", target=name)
            if i % 5 == 0:
                log.record(EventType.TOKEN_ISSUED, actor=Actor("client", name))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if uow.groups is not None:
        assert uow.groups.units == THREADS * PER_THREAD
    engine.dispose()


def test_two_processes_of_grouped_units_keep_one_chain(services: Services) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    url = services.settings.database.url
    procs = [ctx.Process(target=_replica, args=(url, f"r{p}", start)) for p in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(180)
        assert proc.exitcode == 0
    units = 2 * THREADS * PER_THREAD
    assert len(_rows(services.engine)) == units
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.checked == units + 2 * THREADS * (PER_THREAD // 5)
    # Each change has its event: one token.revoked per revoked jti, per replica.
    for name in ("r0", "r1"):
        revoked = services.audit_log.search(limit=10_000)
        mine = [e for e in revoked if e.target == name and e.event_type == "token.revoked"]
        assert len(mine) == THREADS * PER_THREAD
