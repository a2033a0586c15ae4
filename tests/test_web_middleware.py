"""The request context the request layer sets up (web/middleware.py): request ids."""

from __future__ import annotations

import asyncio
import re
import secrets

import pytest
from starlette.types import Message, Receive, Scope, Send

from idhub.adapters.prometheus_metrics import PrometheusMetrics
from idhub.web.middleware import RequestLayer
from tests.test_web_request_layer import layer


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _layer() -> RequestLayer:
    return layer(_ok, PrometheusMetrics())


def _ids(middleware: RequestLayer, count: int, inbound: bytes | None = None) -> list[str]:
    async def run() -> list[str]:
        seen: list[str] = []
        for _ in range(count):
            sent: list[Message] = []
            headers = [(b"x-request-id", inbound)] if inbound else []
            scope = {"type": "http", "path": "/", "headers": headers, "client": ("127.0.0.1", 1)}
            await middleware(scope, _receive, _into(sent))
            line = dict(sent[0]["headers"])[b"x-request-id"].decode()
            assert scope["state"]["request_id"] == line
            seen.append(line)
        return seen

    return asyncio.run(run())


def _into(sent: list[Message]) -> Send:
    async def send(message: Message) -> None:
        sent.append(message)

    return send


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


def test_fresh_request_ids_are_unique_hex_and_cost_no_system_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    middleware = _layer()

    def refused(*_args: object) -> bytes:
        raise AssertionError("a request id read the kernel's random source")

    # Per request: the generator was seeded when the middleware was built.
    monkeypatch.setattr(secrets, "token_hex", refused)
    monkeypatch.setattr(secrets, "token_bytes", refused)
    ids = _ids(middleware, 2000)
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_two_processes_worth_of_middleware_do_not_share_a_sequence() -> None:
    first, second = _layer(), _layer()
    assert not set(_ids(first, 50)) & set(_ids(second, 50))


def test_a_sane_inbound_request_id_is_kept_and_a_bad_one_replaced() -> None:
    middleware = _layer()
    assert _ids(middleware, 1, b"req-12345678") == ["req-12345678"]
    (replaced,) = _ids(middleware, 1, b"bad id with spaces")
    assert re.fullmatch(r"[0-9a-f]{16}", replaced)


def test_a_forked_process_does_not_repeat_its_parents_request_ids() -> None:
    """Built before a fork, the generator must not give parent and child the same ids."""
    import os

    from idhub.web.middleware import RequestIds

    ids = RequestIds()
    ids.new()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and exits
        try:
            os.write(write, ",".join(ids.new() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = pipe.read().split(",")
    os.waitpid(child, 0)
    parents = [ids.new() for _ in range(3)]
    assert len(childs) == 3 and not set(childs) & set(parents)
