"""Lone driver reads on PostgreSQL (adapters/driver_read.py) on connections held out of the
pool (adapters/held_readers.py), in autocommit, as a SQLite file's are.

A pooled read cost the pool's checkout and check-in around its one statement: the queue, the
engine's checkout listeners (the stall guard's check, the poll for a session's end, the
metrics gauge), the autocommit switch both ways and the check-in's reset. Measured in process
on the client-credentials path (a batch's throttle read, `bench/bench_asgi.py --database
postgresql`), that was ~190 µs of CPU per read against ~55 µs for the round trip itself
(docs/performance.md, branch `pgcc`, 2026-12-03 afternoon). A held connection skips the pool
and stays in autocommit between reads (one statement, one snapshot, no BEGIN or ROLLBACK),
and keeps its prepared statements.

What the pool's checkout checked is still checked before every use, without a round trip:
a held connection is given up (closed for real, never back in the pool) when the stall guard
is cooling down (the database stopped answering moments ago) or its session has ended
(`session_ended`: a restart, `pg_terminate_backend`), and the read then takes a fresh
connection from the pool, whose checkout decides as before. A held connection is never used
in a forked child (it shares its parent's socket). Reads inside a unit of work still use the
unit's connection and see its changes.
"""

from __future__ import annotations

import os
from typing import Any

from psycopg.pq import TransactionStatus
from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection, QueuePool

from idhub.adapters._pg_deadline import StallGuard, stall_guard, unfit_to_reuse
from idhub.adapters.held_readers import HELD_READERS, HeldReaders

# A held reader is a pool connection nobody else can take: at most a quarter of the pool, so
# units of work (and the audit appender's own held connection) always find one.
_POOL_SHARE = 4


class HeldPgReaders(HeldReaders):
    def __init__(self, limit: int, guard: StallGuard | None) -> None:
        super().__init__(limit)
        self._guard = guard
        self._pid = os.getpid()
        # A forked child's references to its parent's connections, never dropped: a pooled
        # connection whose last reference goes is checked back in (and reset) by the pool,
        # which in the child would send a ROLLBACK on the parent's socket and hand the
        # parent's session to the child's next checkout.
        self._parents: list[PoolProxiedConnection] = []

    def _take(self, engine: Engine) -> PoolProxiedConnection:
        if self._pid != os.getpid():
            self._forked()
        while True:
            try:
                connection = self._idle.pop()  # atomic: no lock needed between threads
            except IndexError:
                break
            if self._fit(connection):
                return connection
            connection.invalidate()
            connection.close()
        connection = engine.raw_connection()  # the checkout's own checks run here
        driver: Any = connection.driver_connection
        try:
            # Idle as the pool hands it out, which the switch requires.
            driver.autocommit = True
        except BaseException:
            connection.invalidate()  # in an unknown state: not back in the pool
            connection.close()
            raise
        return connection

    def _fit(self, connection: PoolProxiedConnection) -> bool:
        return not unfit_to_reuse(self._guard, connection.driver_connection)  # type: ignore[arg-type]

    def _idle_now(self, driver: Any) -> bool:
        return bool(driver.pgconn.transaction_status == TransactionStatus.IDLE)

    def _unhold(self, connection: PoolProxiedConnection) -> None:
        driver: Any = connection.driver_connection
        if driver is not None and not driver.closed:
            driver.autocommit = False  # as the pool gave it out

    def _forked(self) -> None:
        """A forked child: its parent's connections are left alone, neither used nor closed
        nor given back (the parent still uses them); the child takes its own."""
        self._parents.extend(self._idle)
        self._idle, self._pid = [], os.getpid()

    def close(self) -> None:
        if self._pid != os.getpid():
            self._forked()
        super().close()


def held_pg_readers(engine: Engine) -> HeldPgReaders | None:
    """Held readers for PostgreSQL engine `engine`, or None when its pool is too small to
    spare one (or not a `QueuePool`)."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    limit = min(HELD_READERS, pool.size() // _POOL_SHARE)
    if limit < 1:
        return None
    return HeldPgReaders(limit, stall_guard(engine))
