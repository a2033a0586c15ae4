"""Several writers at once - threads in one process and separate processes, each with its
own engine like separate replicas - still produce one gap-free chain that verifies."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import create_db_engine
from idhub.bootstrap import Services
from idhub.config import DatabaseSettings
from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.clock import SystemClock

THREADS = 6
PER_THREAD = 40
PROCESSES = 3
PER_PROCESS = 90


def _replica(url: str, name: str, count: int, start: Any, threads: int) -> None:
    """One 'replica': its own engine and log, `threads` threads appending at once."""
    engine = create_db_engine(DatabaseSettings(url=url))
    log = SqlAuditLog(engine, SystemClock())

    def work(t: int) -> None:
        start.wait(30)
        for i in range(count // threads):
            if i % 10 == 9:
                log.record_many(
                    [
                        PendingEvent(EventType.SYNC_CHANGE, Actor.system(name), f"{t}-{i}-{k}")
                        for k in range(3)
                    ]
                )
            else:
                log.record(EventType.TOKEN_ISSUED, actor=Actor("client", name), target=f"{t}-{i}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    engine.dispose()


def _expected(count: int, threads: int) -> int:
    per_thread = count // threads
    batches = per_thread // 10
    return threads * (per_thread - batches + batches * 3)


def test_threads_append_one_chain(services: Services) -> None:
    barrier = threading.Barrier(THREADS)

    class _Start:
        def wait(self, timeout: float) -> None:
            barrier.wait(timeout)

    _replica(services.settings.database.url, "threads", THREADS * PER_THREAD, _Start(), THREADS)
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.checked == _expected(THREADS * PER_THREAD, THREADS)
    assert services.audit_log.count() == report.checked


def test_processes_append_one_chain(services: Services) -> None:
    services.audit.record(EventType.SYNC_RUN, actor=Actor.system())
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    url = services.settings.database.url
    procs = [
        ctx.Process(target=_replica, args=(url, f"replica{p}", PER_PROCESS, start, 3))
        for p in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    # Writes from this process too, while the others run.
    start.set()
    for i in range(30):
        services.audit.record(EventType.LOGIN_SUCCEEDED, actor=Actor("user", "main"), target=str(i))
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    report = services.audit_log.verify()
    assert report.ok, report.problem
    expected = 1 + 30 + PROCESSES * _expected(PER_PROCESS, 3)
    assert report.checked == expected
    actors = {e.actor_id for e in services.audit_log.search(limit=10_000)}
    assert {f"replica{p}" for p in range(PROCESSES)} <= actors


def test_archiving_while_others_append(services: Services, tmp_path: Any) -> None:
    """Archive takes the append lock for its delete + anchor move, so appends racing it land
    after the archived stretch and the live chain still verifies from its new anchor."""
    from idhub.adapters.audit_archive import archive_before, verify_archives

    for i in range(200):
        services.audit.record(EventType.SYNC_CHANGE, actor=Actor.system("sync"), target=str(i))
    cut = services.clock.now() + 0.001
    stop = threading.Event()
    written = [0]

    def append() -> None:
        while not stop.is_set():
            services.audit.record(EventType.TOKEN_ISSUED, actor=Actor("client", "oa"))
            written[0] += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        result = archive_before(
            services.audit_log, before=cut, directory=tmp_path, clock=services.clock,
            actor=Actor("admin", "test"),
        )  # fmt: skip
    finally:
        stop.set()
        writer.join(30)
    assert result is not None and result.first_seq == 1 and result.last_seq >= 200
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.first_seq == result.last_seq + 1
    # Every event is somewhere: archived, or live (plus the archive's own record).
    assert result.count + report.checked == 200 + written[0] + 1
    (archive,) = verify_archives(services.audit_log, [result.path])
    assert archive.ok, archive.problem


def test_writers_with_stale_tails_and_big_batches_keep_one_chain(services: Services) -> None:
    """Two logs on one database take turns, so each one's remembered tail is always stale
    (the PostgreSQL fast path must notice and fall back); big batches go the long way."""
    url = services.settings.database.url
    engines = [create_db_engine(DatabaseSettings(url=url)) for _ in range(2)]
    logs = [SqlAuditLog(engine, SystemClock()) for engine in engines]
    try:
        for i in range(30):
            logs[i % 2].record(EventType.TOKEN_ISSUED, actor=Actor("client", f"r{i % 2}"))
            if i % 3 == 0:  # the same writer twice in a row: its tail is current
                logs[i % 2].record(EventType.TOKEN_REFRESHED, actor=Actor("client", "again"))
        logs[0].record_many(
            [PendingEvent(EventType.SYNC_CHANGE, Actor.system("sync"), str(i)) for i in range(6000)]
        )
        logs[0].record(EventType.SYNC_RUN, actor=Actor.system("sync"))
        logs[1].record(EventType.SYNC_RUN, actor=Actor.system("sync"))
    finally:
        for engine in engines:
            engine.dispose()
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.checked == 30 + 10 + 6000 + 2
