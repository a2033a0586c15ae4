"""Group commit for short write transactions that many threads want at once.

When writers queue on one lock anyway (SQLite has one writer; the audit chain's append lock
serializes PostgreSQL appends), each paying its own transaction, COMMIT and lock turn, the
lock is the narrow part. Here the thread that gets the lock (the leader) takes every request
that queued meanwhile and runs them in ONE transaction; the others (followers) find their
answer ready when the lock comes to them. Nothing is answered before its transaction
committed, and a request that arrives while a batch runs waits for the next one: a batch is
exactly "what queued while the last one ran", so it grows with the load and costs nothing at
low load (a lone request is a batch of one).

If a batch fails, it rolled back as a whole; its requests are then run one by one, so one bad
request cannot fail the others and each gets its own answer or error.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")

# Bounds one transaction's length (and how long the write lock is held at a time).
MAX_BATCH = 64


@dataclass
class _Slot(Generic[P, R]):
    payload: P
    done: bool = False
    result: R | None = None
    error: BaseException | None = field(default=None, repr=False)


class GroupCommit(Generic[P, R]):
    """`run(payload)` returns `run_batch([..., payload, ...])`'s answer for that payload.
    `run_batch` runs all its payloads in one transaction and returns one result each, in
    order; `leader` is the lock writers of this process queue on."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[P]], Sequence[R]],
        *,
        leader: contextlib.AbstractContextManager[Any] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run_batch = run_batch
        self._leader = leader if leader is not None else threading.Lock()
        self._max_batch = max_batch
        self._queue: list[_Slot[P, R]] = []
        self._queue_lock = threading.Lock()

    def run(self, payload: P) -> R:
        outcome = self.run_many([payload])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def run_many(self, payloads: Sequence[P]) -> list[R | Exception]:
        """Several requests of one caller: they join the same batch (or consecutive ones).
        One outcome each: its result, or the error its transaction failed with (a batch that
        failed is retried one by one, so some may have committed and others not)."""
        slots: list[_Slot[P, R]] = [_Slot(p) for p in payloads]
        with self._queue_lock:
            self._queue.extend(slots)
        with self._leader:
            while not slots[-1].done:
                with self._queue_lock:
                    batch = self._queue[: self._max_batch]
                    del self._queue[: self._max_batch]
                if not batch:  # cannot happen: every leader finishes the slots it took
                    raise RuntimeError("group commit: a request was lost")
                self._execute(batch)
        outcomes: list[R | Exception] = []
        for slot in slots:
            if slot.error is not None and not isinstance(slot.error, Exception):
                raise slot.error  # KeyboardInterrupt and the like: not an outcome
            outcomes.append(slot.error if slot.error is not None else slot.result)  # type: ignore[arg-type]
        return outcomes

    def _execute(self, batch: list[_Slot[P, R]]) -> None:
        try:
            results = self._run_batch([s.payload for s in batch])
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
                batch[0].done = True
                return
            # Rolled back as a whole: each on its own, so each gets its own outcome.
            for slot in batch:
                self._execute([slot])
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result = result
            slot.done = True
