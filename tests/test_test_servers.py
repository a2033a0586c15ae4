"""The suite's own servers stop without waiting out a polling interval: the uvicorn that
`serve_asgi` runs in a thread (hundreds a run) and the DingTalk and WeCom fakes (two in each
upstream test). Each test stops one at the worst moment, right after it began a wait."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

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


async def _slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(float(request.query_params["seconds"]))
    return PlainTextResponse("done")


def _started() -> tuple[_ThreadedServer, threading.Thread, str]:
    app = Starlette(routes=[Route("/slow", _slow)])
    port = free_port()
    server = _ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.005)
    return server, thread, f"http://127.0.0.1:{port}"


def _stop_time(*, keep_alive: bool) -> float:
    server, thread, url = _started()
    with httpx.Client() as client:
        if keep_alive:  # the connection stays open, idle, as a test's client leaves it
            assert client.get(f"{url}/slow", params={"seconds": 0}).status_code == 200
        asked = time.monotonic()
        server.stop()
        thread.join(10)
        assert not thread.is_alive()
        return time.monotonic() - asked


def test_a_stopped_uvicorn_with_nothing_open_is_down_at_once() -> None:
    assert statistics.median(_stop_time(keep_alive=False) for _ in range(3)) < _PROMPT


def test_a_stopped_uvicorn_closes_an_idle_keep_alive_connection_at_once() -> None:
    assert statistics.median(_stop_time(keep_alive=True) for _ in range(3)) < _PROMPT


@pytest.mark.parametrize("seconds", [0.03, 0.3])  # inside the 0.1 s idhub waits, and beyond
def test_a_request_in_flight_still_gets_its_answer_when_uvicorn_stops(seconds: float) -> None:
    server, thread, url = _started()
    answers: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{url}/slow", params={"seconds": seconds}, timeout=10)
        )
    )
    client.start()
    deadline = time.monotonic() + 10
    while not server.server_state.tasks and time.monotonic() < deadline:
        time.sleep(0.001)  # the request is being handled
    server.stop()
    client.join(10)
    thread.join(10)
    assert [(r.status_code, r.text) for r in answers] == [(200, "done")]


def _fake_stop_time() -> float:
    fake: Any = DingTalkFake(dingtalk_company(users=1, departments=1)).start()
    time.sleep(0.01)  # serve_forever is inside its wait for a request or the next poll
    asked = time.monotonic()
    fake.stop()
    return time.monotonic() - asked


def test_a_stopped_fake_does_not_wait_out_its_poll() -> None:
    assert statistics.median(_fake_stop_time() for _ in range(3)) < _PROMPT
