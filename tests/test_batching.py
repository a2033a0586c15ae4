"""web/batching.py's hand-over: batches run on the batcher's own threads (no more at once
than its concurrency), carry the drain's context variables, and a batch handed over is
answered even when its drain is cancelled while it runs."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import time
from collections.abc import Sequence

from idhub.web.batching import Batcher

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_batches_run_on_the_batchers_own_threads() -> None:
    names: list[str] = []

    def run(batch: Sequence[int]) -> list[int | Exception]:
        names.append(threading.current_thread().name)
        time.sleep(0.01)
        return list(batch)

    batcher: Batcher[int, int] = Batcher(run, concurrency=2)

    async def main() -> list[int]:
        answers = []
        for round_ in range(5):
            answers += await asyncio.gather(*(batcher.submit(round_ * 10 + n) for n in range(6)))
        return answers

    assert asyncio.run(main()) == [r * 10 + n for r in range(5) for n in range(6)]
    assert all(name.startswith("idhub-batch") for name in names), names
    assert len(set(names)) <= 2


def test_the_drains_context_variables_reach_the_batch() -> None:
    seen: list[str] = []

    def run(batch: Sequence[int]) -> list[int | Exception]:
        seen.append(WHO.get())
        return list(batch)

    batcher: Batcher[int, int] = Batcher(run)

    async def main() -> int:
        WHO.set("request 1")
        return await batcher.submit(1)

    assert asyncio.run(main()) == 1
    assert seen == ["request 1"]


def test_a_batch_handed_over_is_answered_when_its_drain_is_cancelled() -> None:
    started = threading.Event()

    def run(batch: Sequence[int]) -> list[int | Exception]:
        started.set()
        time.sleep(0.2)  # the drain is cancelled meanwhile
        return [n * 2 for n in batch]

    batcher: Batcher[int, int] = Batcher(run)

    async def main() -> int:
        answer = asyncio.ensure_future(batcher.submit(21))
        while not started.is_set():
            await asyncio.sleep(0.005)
        for drain in list(batcher._drains):
            drain.cancel()
        return await asyncio.wait_for(answer, timeout=5)

    assert asyncio.run(main()) == 42


def test_a_failing_batch_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    def run(batch: Sequence[int]) -> list[int | Exception]:
        if 0 in batch:
            raise RuntimeError("the database went away")
        return [ValueError("odd") if n % 2 else n for n in batch]

    batcher: Batcher[int, int] = Batcher(run)

    async def main() -> list[object]:
        first = await asyncio.gather(batcher.submit(0), batcher.submit(2), return_exceptions=True)
        second = await asyncio.gather(batcher.submit(1), batcher.submit(4), return_exceptions=True)
        return [*first, *second]

    first, second, odd, four = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(second, RuntimeError)
    assert isinstance(odd, ValueError) and four == 4


def test_a_batch_outliving_its_event_loop_leaves_the_threads_serving() -> None:
    """The loop a batch was handed over from closes while the batch runs (a test client's
    loop, a worker shutting down): the answer has nowhere to go, and the next loop is
    served by the same threads."""
    release = threading.Event()

    def run(batch: Sequence[int]) -> list[int | Exception]:
        if 1 in batch:
            release.wait(5)
        return list(batch)

    batcher: Batcher[int, int] = Batcher(run)

    async def abandon() -> None:
        waiting = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        waiting.cancel()

    asyncio.run(abandon())
    release.set()
    time.sleep(0.05)  # the batch finishes against the closed loop

    async def again() -> int:
        return await batcher.submit(7)

    assert asyncio.run(again()) == 7


def test_the_threads_end_with_their_batcher() -> None:
    def run(batch: Sequence[int]) -> list[int | Exception]:
        return list(batch)

    # Thread objects, not idents: an ident is reused by a thread started after another
    # (an earlier test's batch thread) ended, which made this test see no new thread.
    before = set(threading.enumerate())
    batcher: Batcher[int, int] = Batcher(run, concurrency=2)

    async def main(batcher: Batcher[int, int]) -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(n) for n in range(4))))

    assert asyncio.run(main(batcher)) == [0, 1, 2, 3]
    started = [t for t in threading.enumerate() if t not in before]
    assert started and all(t.name.startswith("idhub-batch") for t in started)
    del batcher
    gc.collect()
    for thread in started:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in started)
