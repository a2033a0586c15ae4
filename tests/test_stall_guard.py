"""When idhub takes PostgreSQL for stalled (adapters/_pg_deadline.py `StallGuard`).

One round trip that runs out of time while the server answers every other connection is one
slow statement, not a stalled server: it must fail alone and leave the database in use. Under
full load a lone read that missed the deadline used to refuse every connection for a second,
thousands of 503s at a time (docs/performance.md, 2026-12-04). A server that answers nobody
(SIGSTOP on the whole cluster) is still refused at once after its second timeout, and any
answer ends the cool-down. The real parts: a throwaway cluster of our own (tests/pg_cluster.py),
one of whose backends is stopped with SIGSTOP while the others run."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from idhub.adapters._pg_deadline import StallGuard, stall_guard
from idhub.adapters.database import create_db_engine
from idhub.config import DatabaseSettings
from tests.pg_cluster import PgCluster, running_cluster

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

# Server-side statement timeout; idhub stops waiting 0.25 s after it.
STATEMENT_TIMEOUT = 0.5
DEADLINE = STATEMENT_TIMEOUT + 0.25
CONNECT_TIMEOUT = 2.0  # libpq's least


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_timeout_alone_does_not_start_a_cool_down() -> None:
    clock = Clock()
    guard = StallGuard(1.0, now=clock)
    guard.stalled()
    assert guard.stalls == 1
    assert not guard.check_cooling_down()


def test_a_second_timeout_with_no_answer_between_starts_one() -> None:
    clock = Clock()
    guard = StallGuard(1.0, now=clock)
    guard.stalled()
    clock.now += 5.0  # however far apart: nothing was answered in between
    guard.stalled()
    assert guard.check_cooling_down()
    clock.now += 0.99
    assert guard.check_cooling_down()
    clock.now += 0.02
    assert not guard.check_cooling_down()
    # Still no answer: the next timeout starts the next cool-down at once.
    guard.stalled()
    assert guard.check_cooling_down()
    assert guard.stalls == 3


def test_an_answer_between_two_timeouts_makes_each_one_slow_statement() -> None:
    clock = Clock()
    guard = StallGuard(1.0, now=clock)
    for _ in range(5):
        guard.stalled()
        guard.answered()
    assert guard.stalls == 5
    assert not guard.check_cooling_down()


def test_an_answer_ends_a_cool_down() -> None:
    clock = Clock()
    guard = StallGuard(1.0, now=clock)
    guard.stalled()
    guard.stalled()
    assert guard.check_cooling_down()
    guard.answered()
    assert not guard.check_cooling_down()
    assert not guard.unanswered
    guard.stalled()  # a fresh first timeout after the answer
    assert not guard.check_cooling_down()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    yield from running_cluster()


@pytest.fixture
def engine(cluster: PgCluster) -> Iterator[Engine]:
    made = create_db_engine(
        DatabaseSettings(
            url=cluster.url,
            statement_timeout=STATEMENT_TIMEOUT,
            connect_timeout=CONNECT_TIMEOUT,
            pool_size=5,
        )
    )
    try:
        yield made
    finally:
        cluster.resume()
        made.dispose()


def _select(engine: Engine) -> float:
    """Seconds one pooled `SELECT 1` took (raises what the engine raises)."""
    started = time.monotonic()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    return time.monotonic() - started


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_one_stopped_backend_fails_its_own_request_and_no_other(engine: Engine) -> None:
    guard = stall_guard(engine)
    assert guard is not None
    stuck = engine.connect()
    pooled = {_backend_pid(engine)}  # another connection, back in the pool
    pid = stuck.execute(text("SELECT pg_backend_pid()")).scalar_one()
    stuck.commit()
    failed: list[BaseException] = []
    answered_meanwhile = 0

    def on_the_stopped_backend() -> None:
        try:
            stuck.execute(text("SELECT 1"))
        except Exception as exc:  # what the deadline raises, through SQLAlchemy
            failed.append(exc)

    os.kill(pid, signal.SIGSTOP)
    try:
        waiting = threading.Thread(target=on_the_stopped_backend)
        started = time.monotonic()
        waiting.start()
        # Load on the other connections while the one waits out its deadline, and after.
        while waiting.is_alive() or time.monotonic() - started < DEADLINE + 0.5:
            assert _select(engine) < 0.5
            answered_meanwhile += 1
            time.sleep(0.01)
        waiting.join()
    finally:
        os.kill(pid, signal.SIGCONT)
        stuck.close()
    assert failed, "the round trip on the stopped backend did not fail"
    assert "did not answer within" in str(failed[0])
    assert guard.stalls == 1
    assert not guard.check_cooling_down()
    assert answered_meanwhile > 20
    assert _select(engine) < 0.5
    # The other pooled connection is still the one opened before: one closed connection did
    # not retire the pool as a restart does (SQLAlchemy's reading of a closed connection).
    # Two at once, since the pool may hand out the closed one's slot first, reconnected.
    with engine.connect() as first, engine.connect() as second:
        now = {
            conn.execute(text("SELECT pg_backend_pid()")).scalar_one() for conn in (first, second)
        }
    assert pooled <= now


def test_a_stopped_server_is_refused_at_once_after_its_second_timeout(
    cluster: PgCluster, engine: Engine
) -> None:
    guard = stall_guard(engine)
    assert guard is not None
    assert _select(engine) < 0.5  # a pooled connection, answered
    cluster.pause()
    try:
        # The pooled connection's round trip runs out of time, then the fresh connection
        # that replaces it gets no answer to its start-up either (connect_timeout, 2 s).
        for bound in (DEADLINE, CONNECT_TIMEOUT):
            started = time.monotonic()
            with pytest.raises(Exception, match=r"did not answer within|timeout expired"):
                _select(engine)
            assert bound - 0.05 <= time.monotonic() - started < bound + 0.75
        assert guard.check_cooling_down()
        started = time.monotonic()
        with pytest.raises(Exception, match="stopped answering moments ago"):
            _select(engine)
        assert time.monotonic() - started < 0.2  # refused, not waited for
    finally:
        cluster.resume()
    # Back: once the cool-down has run out a fresh connection is answered, and that answer
    # clears what the guard knew.
    deadline = time.monotonic() + 5
    while True:
        try:
            _select(engine)
            break
        except Exception:
            assert time.monotonic() < deadline, "the database was not used again"
            time.sleep(0.1)
    assert not guard.unanswered
    assert not guard.check_cooling_down()
