"""The suite's own servers stop without waiting out a polling interval: the uvicorn that
`serve_asgi` runs in a thread (hundreds a run) and the DingTalk and WeCom fakes (two in each
upstream test). Each test stops one at the worst moment, right after it began a wait."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette

from tests.conftest import _ThreadedServer, free_port
from tests.dingtalk_fake import DingTalkFake
from tests.dingtalk_fake import company as dingtalk_company

# Well under the waits these servers had (0.1 s uvicorn ticks, 0.5 s fake polls), well over
# a thread switch on a busy box.
_PROMPT = 0.05


class _TimedServer(_ThreadedServer):
    """Notes when each tick ran and when the main loop ended."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ticked = threading.Event()
        self.loop_ended = 0.0

    async def on_tick(self, counter: int) -> bool:
        self.ticked.set()
        return await super().on_tick(counter)

    async def main_loop(self) -> None:
        await super().main_loop()
        self.loop_ended = time.monotonic()


def _main_loop_exit_after_stop() -> float:
    config = uvicorn.Config(Starlette(), host="127.0.0.1", port=free_port(), log_level="warning")
    server = _TimedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ticked.wait(10)
    server.ticked.clear()
    assert server.ticked.wait(10)  # a tick just ran: the next is ~0.1 s away
    asked = time.monotonic()
    server.stop()
    thread.join(10)
    assert not thread.is_alive()
    return server.loop_ended - asked


def test_a_stopped_uvicorn_leaves_its_main_loop_at_once() -> None:
    assert statistics.median(_main_loop_exit_after_stop() for _ in range(3)) < _PROMPT


def _fake_stop_time() -> float:
    fake: Any = DingTalkFake(dingtalk_company(users=1, departments=1)).start()
    time.sleep(0.01)  # serve_forever is inside its wait for a request or the next poll
    asked = time.monotonic()
    fake.stop()
    return time.monotonic() - asked


def test_a_stopped_fake_does_not_wait_out_its_poll() -> None:
    assert statistics.median(_fake_stop_time() for _ in range(3)) < _PROMPT
