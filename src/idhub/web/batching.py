"""One threadpool hop per batch of requests instead of one per request.

A hot endpoint whose work queues on a lock anyway (CAS ticket validation: the database's write
lock) gains nothing from 40 threadpool threads each waiting their turn and fighting for the
GIL while they wait; it pays a thread hand-over per request and the contention. A `Batcher`
keeps the requests that arrive on the event loop while a batch runs, and hands them over
together to ONE threadpool call of a function that takes a list. At low load a request is a
batch of one and waits for nothing; under load a batch is "what arrived while the last one
ran". Each request still gets its own answer or its own error.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

P = TypeVar("P")
R = TypeVar("R")

MAX_BATCH = 64


class _Lane(Generic[P, R]):
    def __init__(self) -> None:
        self.pending: list[tuple[P, asyncio.Future[R]]] = []
        self.running = 0


class Batcher(Generic[P, R]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[P]], Sequence[R | Exception]],
        *,
        max_batch: int = MAX_BATCH,
        concurrency: int = 1,
    ) -> None:
        """`run_batch` answers each payload, in order, with its result or its own error.

        `concurrency`: how many batches may be in the threadpool at once. With two, one batch
        can compute (sign tokens) while the other waits for a lock or a commit."""
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._concurrency = concurrency
        # Per event loop: a test client may run the app on a loop of its own.
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane[P, R]] = (
            weakref.WeakKeyDictionary()
        )
        self._drains: set[asyncio.Task[None]] = set()

    async def submit(self, payload: P) -> R:
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop)
        if lane is None:
            lane = self._lanes[loop] = _Lane()
        future: asyncio.Future[R] = loop.create_future()
        lane.pending.append((payload, future))
        if lane.running < self._concurrency:
            lane.running += 1
            task = loop.create_task(self._drain(lane))
            self._drains.add(task)  # a reference, or the task may be collected mid-way
            task.add_done_callback(self._drains.discard)
        # A client that went away cancels its wait, not the batch: once handed over, the work
        # is done (a ticket spent and recorded) as it would be by a threadpool call.
        return await future

    async def _drain(self, lane: _Lane[P, R]) -> None:
        try:
            while lane.pending:
                batch = lane.pending[: self._max_batch]
                del lane.pending[: self._max_batch]
                try:
                    results = await run_in_threadpool(self._run_batch, [p for p, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            lane.running -= 1
            if not lane.running:
                for _, future in lane.pending:  # only if the drain itself was cancelled
                    if not future.done():
                        future.cancel()
                lane.pending.clear()
