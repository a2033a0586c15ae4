"""One pooled connection an engine's audit appends keep between calls (`HeldWriter` on a
SQLite file, `HeldAppender` on PostgreSQL): a checkout and check-in per append cost more
client CPU than the append's own statements. What both need to get right is here once:

- a forked child never uses its parent's connection (SQLite forbids it; a shared socket
  would interleave two processes' messages); it is left alone there, not closed, and the
  child takes its own;
- a connection that failed in any way is not trusted again (`discard`);
- `engine.dispose()` bumps a generation, so a connection taken before it is closed, not kept;
- an engine dropped without `dispose()` gets the held connection back first (a finalizer
  with no reference to the engine, so it cannot keep the engine alive).

Not thread-safe on purpose: its one user at a time is the append's group-commit leader.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

from sqlalchemy import Connection, Engine, event


class HeldConnection:
    def __init__(self, engine: Engine) -> None:
        self._held: Connection | None = None
        self._pid = 0
        self._generation = 0
        event.listen(engine, "engine_disposed", lambda _engine: self.close())
        weakref.finalize(engine, self.close)

    def take(
        self,
        connect: Callable[[], Connection],
        *,
        unusable: Callable[[Connection], bool] | None = None,
    ) -> tuple[Connection, int]:
        """The held connection of this process (a fresh one from `connect` when none is held,
        or when `unusable` says the held one is not fit), and the generation to hand back."""
        connection, self._held = self._held, None
        if connection is not None and self._pid != os.getpid():
            connection = None
        if connection is not None and unusable is not None and unusable(connection):
            self.discard(connection)
            connection = None
        if connection is None:
            connection = connect()
        return connection, self._generation

    def keep(
        self,
        connection: Connection,
        generation: int,
        *,
        unkept: Callable[[], None] | None = None,
    ) -> None:
        """Holds `connection` for the next call, unless the engine was disposed since it was
        taken: then it goes back to (the old) pool, after `unkept` restores what the pool
        gave out."""
        if generation == self._generation:
            self._held, self._pid = connection, os.getpid()
            return
        if unkept is not None:
            unkept()
        connection.close()

    @staticmethod
    def discard(connection: Connection) -> None:
        """A connection whose state is unknown (a statement half on the wire, a lock maybe
        held, a blink): really closed, never back in the pool."""
        connection.invalidate()
        connection.close()

    def close(self) -> None:
        self._generation += 1
        connection, self._held = self._held, None
        if connection is not None and self._pid == os.getpid():
            # Really closed: a connection given back to a disposed pool would stay open there.
            self.discard(connection)
