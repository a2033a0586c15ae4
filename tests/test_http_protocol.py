"""The HTTP/1.1 protocol `idhub serve` runs (web/http_protocol.py), over real sockets with a
small ASGI app: pipelining, `Expect: 100-continue`, chunked bodies both ways, HEAD,
`Connection: close` and HTTP/1.0, a client leaving mid-body, `receive` after the body,
flow control both ways, application errors, the request deadline and the keep-alive
timeout, and a response head leaving with its body in one write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from idhub.config import LimitsSettings
from idhub.web.http_protocol import REQUEST_TASK, GuardedHttpToolsProtocol
from idhub.web.http_server import server_config
from tests.conftest import free_port, serve_config

LIMITS = LimitsSettings(request_timeout=1.5, keep_alive_timeout=1, max_header_bytes=8192)


class App:
    """Echoes what it received (path, query, headers it was asked about, the body and the
    messages it took) as JSON; a few paths behave otherwise, see `__call__`."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.released = threading.Event()

    async def read_body(self, receive: Any) -> tuple[bytes, list[str]]:
        body, kinds = b"", []
        while True:
            message = await receive()
            kinds.append(message["type"] + ("+" if message.get("more_body") else ""))
            if message["type"] == "http.disconnect":
                return body, kinds
            body += message.get("body", b"")
            if not message.get("more_body"):
                return body, kinds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        if path == "/no-read":  # answers without reading the body
            await self.answer(send, b"refused", status=413, close=True)
            return
        if path == "/boom":
            raise RuntimeError("the application failed")
        if path == "/stream":  # a chunked answer whose body waits for the test
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while not self.released.is_set():
                await asyncio.sleep(0.01)
            for part in (b"one,", b"two"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/big":  # a large answer in pieces: past the write high-water mark
            size = int(scope["query_string"] or b"0")
            piece = b"x" * 262144
            headers = [(b"content-length", b"%d" % (size * len(piece)))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for _ in range(size):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            self.seen.append({"path": path, "sent": time.monotonic()})
            return
        if path == "/slow-read":  # reads the body slowly: the server must hold back
            body, kinds = b"", []
            while True:
                await asyncio.sleep(0.002)
                message = await receive()
                body += message.get("body", b"")
                kinds.append(message["type"])
                if not message.get("more_body"):
                    break
            self.seen.append({"path": path, "size": len(body), "messages": len(kinds)})
            await self.answer(send, str(len(body)).encode())
            return
        if path == "/task":  # answers the name of the task it runs in
            await self.read_body(receive)
            task = asyncio.current_task()
            await self.answer(send, task.get_name().encode() if task else b"")
            return
        if path == "/late":  # starts reading only once the body's pieces have all arrived
            await asyncio.sleep(0.3)
        body, kinds = await self.read_body(receive)
        record = {
            "path": path,
            "method": scope["method"],
            "query": scope["query_string"].decode(),
            "http_version": scope["http_version"],
            "body": body.decode(),
            "messages": kinds,
        }
        if path == "/after":  # a receive after the whole body waits for the disconnect
            started = time.monotonic()
            record["after"] = (await receive())["type"]
            record["waited"] = time.monotonic() - started
            self.seen.append(record)
            return
        self.seen.append(record)
        await self.answer(send, json.dumps(record).encode())

    async def answer(
        self, send: Any, body: bytes, *, status: int = 200, close: bool = False
    ) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[int, App]]]:
    stack = contextlib.ExitStack()

    @contextlib.contextmanager
    def running(app: App) -> Iterator[int]:
        port = free_port()
        config = server_config(app, limits=LIMITS, host="127.0.0.1", port=port, log_level="warning")
        with serve_config(config):
            try:
                yield port
            finally:
                app.released.set()

    def start() -> tuple[int, App]:
        app = App()
        return stack.enter_context(running(app)), app

    with stack:
        yield start


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _read_response(sock: socket.socket, buffer: bytearray, *, head_only: bool = False) -> bytes:
    """One response (head and a content-length or chunked body) from `buffer` + the socket."""

    def fill() -> None:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(bytes(buffer))
        buffer.extend(chunk)

    while b"\r\n\r\n" not in buffer:
        fill()
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    lowered = head.lower()
    del buffer[:end]
    if head_only or head.startswith(b"HTTP/1.1 100 "):
        return head
    if b"transfer-encoding: chunked" in lowered:
        while not buffer.endswith(b"0\r\n\r\n"):
            fill()
        body = bytes(buffer)
        buffer.clear()
        return head + body
    length = 0
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buffer) < length:
        fill()
    body = bytes(buffer[:length])
    del buffer[:length]
    return head + body


def _body(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def _wait_until_seen(app: App, bound: float = 5) -> None:
    """Waits (up to `bound` seconds) for the app to have finished one request."""
    deadline = time.monotonic() + bound
    while not app.seen and time.monotonic() < deadline:
        time.sleep(0.02)


def _closed(sock: socket.socket, bound: float = 5) -> tuple[bytes, float]:
    """What the server still sends until it closes, and after how long."""
    started = time.monotonic()
    sock.settimeout(bound)
    rest = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            rest += chunk
    return rest, time.monotonic() - started


# ------------------------------------------------------------------ requests


def test_pipelined_requests_are_answered_in_order(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(
            b"GET /one?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        buffer = bytearray()
        answers = [_body(_read_response(sock, buffer)) for _ in range(3)]
    assert [a["path"] for a in answers] == ["/one", "/two", "/three"]
    assert answers[0]["query"] == "a=1" and answers[1]["body"] == "hello"


def test_expect_100_continue(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        buffer = bytearray()
        # The body is sent only once the server asked for it.
        assert _read_response(sock, buffer).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"body")
        assert _body(_read_response(sock, buffer))["body"] == "body"
    # An answer given without reading the body sends no 100 Continue.
    with _connect(port) as sock:
        sock.sendall(
            b"POST /no-read HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 4\r\n\r\n"
        )
        answer, _ = _closed(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer


def test_a_chunked_request_body_arrives_whole(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"5\r\nhello\r\n", b"1\r\n,\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
            sock.sendall(part)
            time.sleep(0.05)
        answer = _body(_read_response(sock, bytearray()))
    assert answer["body"] == "hello, world"
    # It came in pieces, each `more_body` but the last.
    assert len(answer["messages"]) > 1 and answer["messages"][-1] == "http.request"
    assert all(kind == "http.request+" for kind in answer["messages"][:-1])
    # Pieces that arrived before the application read are handed over together.
    with _connect(port) as sock:
        sock.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"5\r\nhello\r\n", b"1\r\n,\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"):
            sock.sendall(part)
            time.sleep(0.02)
        answer = _body(_read_response(sock, bytearray()))
    assert answer["body"] == "hello, world" and answer["messages"] == ["http.request"]


def test_a_client_leaving_mid_body_is_a_disconnect(serve: Callable[..., tuple[int, App]]) -> None:
    port, app = serve()
    with _connect(port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npart")
        time.sleep(0.2)
    _wait_until_seen(app)
    assert app.seen and app.seen[0]["messages"][-1] == "http.disconnect"
    assert app.seen[0]["body"] == "part"


def test_a_receive_after_the_body_waits_for_the_disconnect(
    serve: Callable[..., tuple[int, App]],
) -> None:
    """ASGI: once the body is read, `receive` blocks until the client goes (Starlette's
    `is_disconnected` and streaming responses rely on it)."""
    port, app = serve()
    with _connect(port) as sock:
        sock.sendall(b"POST /after HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        time.sleep(0.4)
    _wait_until_seen(app)
    assert app.seen[0]["after"] == "http.disconnect"
    assert app.seen[0]["waited"] >= 0.3


def test_head_answers_carry_no_body(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        buffer = bytearray()
        head = _read_response(sock, buffer, head_only=True)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: " in head
        # What follows is the next answer, not a body.
        following = _read_response(sock, buffer)
        assert following.startswith(b"HTTP/1.1 200") and _body(following)["path"] == "/next"


def test_connection_close_and_http_1_0(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    for request in (
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.0\r\n\r\n",
    ):
        with _connect(port) as sock:
            sock.sendall(request)
            answer, took = _closed(sock)
        assert b"connection: close\r\n" in answer.lower(), request
        assert _body(answer)["path"] == "/a" and took < 1


def test_a_stream_starts_before_its_body(serve: Callable[..., tuple[int, App]]) -> None:
    port, app = serve()
    with _connect(port) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        buffer = bytearray()
        head = _read_response(sock, buffer, head_only=True)
        assert b"transfer-encoding: chunked" in head
        app.released.set()
        sock.sendall(b"GET /after-stream HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = b""
        while b"0\r\n\r\n" not in rest:
            rest += sock.recv(65536)
        assert rest.startswith(b"4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n")


def test_flow_control_both_ways(serve: Callable[..., tuple[int, App]]) -> None:
    port, app = serve()
    # A body much larger than the read high-water mark, to an app reading slowly.
    size = 2_000_000
    with _connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST /slow-read HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 4000):  # pieces that pile up while the app sleeps
            sock.sendall(b"b" * 4000)
        answer = _read_response(sock, bytearray())
    assert answer.endswith(b"\r\n\r\n%d" % size)
    assert app.seen[0]["size"] == size and app.seen[0]["messages"] > 1
    # An answer much larger than the socket buffers, to a client that does not read at first:
    # the application's `send` waits until the transport drains.
    with _connect(port) as sock:
        sock.sendall(b"GET /big?64 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        reading = time.monotonic()
        answer = _read_response(sock, bytearray())
    assert len(answer.split(b"\r\n\r\n", 1)[1]) == 64 * 262144
    assert app.seen[1]["sent"] > reading  # its last piece waited for the client


def test_application_errors(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, _ = _closed(sock)
    assert answer.startswith(b"HTTP/1.1 500") and answer.endswith(b"Internal Server Error")


# ------------------------------------------------------------------ deadlines


def test_a_slow_request_after_an_answered_one_gets_a_408(
    serve: Callable[..., tuple[int, App]],
) -> None:
    """The deadline runs for every request on a connection, from its first byte, and a
    request cut off gets its 408 although an earlier answer on the connection is done."""
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _body(_read_response(sock, bytearray()))["path"] == "/first"
        sock.sendall(b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc")
        answer, took = _closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 1.2 < took < 2.5
    # Its head incomplete (no answer of its own begun yet): a 408 all the same.
    with _connect(port) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _body(_read_response(sock, bytearray()))["path"] == "/first"
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        answer, took = _closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert 1.2 < took < 2.5


def test_a_deadline_during_an_answer_writes_no_408_into_it(
    serve: Callable[..., tuple[int, App]],
) -> None:
    """A pipelined request cut off while the answer before it is still streaming: the
    connection closes, and no 408 is written into the middle of that answer."""
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n")
        answer, took = _closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and b"408" not in answer
    assert 1.2 < took < 2.5


def test_the_deadline_counts_from_the_first_byte_not_from_the_connection(
    serve: Callable[..., tuple[int, App]],
) -> None:
    port, _ = serve()
    with _connect(port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        buffer = bytearray()
        _read_response(sock, buffer)
        # Well inside the keep-alive timeout, the next request; sent in pieces over 1.2 s,
        # which is within its own deadline but past the first request's.
        time.sleep(0.6)
        sock.sendall(b"GET /b HTTP/1.1\r\n")
        time.sleep(0.6)
        sock.sendall(b"Host: x\r\n")
        time.sleep(0.6)
        sock.sendall(b"\r\n")
        assert _body(_read_response(sock, buffer))["path"] == "/b"


def test_idle_connections_close_quietly(serve: Callable[..., tuple[int, App]]) -> None:
    port, _ = serve()
    # After an answer: the keep-alive timeout (1 s), nothing written.
    with _connect(port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        _read_response(sock, bytearray())
        rest, took = _closed(sock)
    assert rest == b"" and 0.8 < took < 1.4
    # A connection that never sends: the request deadline (1.5 s), nothing written.
    with _connect(port) as sock:
        rest, took = _closed(sock)
    assert rest == b"" and 1.3 < took < 2.2


def test_a_busy_connection_is_not_cut_off(serve: Callable[..., tuple[int, App]]) -> None:
    """Many requests over more than both timeouts: the watchdog re-arms, never fires."""
    port, _ = serve()
    with _connect(port) as sock:
        buffer = bytearray()
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < 2.5:
            sock.sendall(b"POST /n HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nn")
            assert _body(_read_response(sock, buffer))["body"] == "n"
            count += 1
            time.sleep(0.01)
    assert count > 20


# ------------------------------------------------------------------ one write per answer


def test_a_response_head_leaves_with_its_body_in_one_write() -> None:
    """uvicorn writes a response's head and its body separately (two syscalls and, with
    TCP_NODELAY, two segments); here a declared-length answer is one write, `100 Continue`
    goes at once, and a stream's head does not wait for its body."""
    from uvicorn.server import ServerState

    app = App()

    class Recording(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[bytes] = []
            self.closed = False

        def write(self, data: Any) -> None:
            self.writes.append(bytes(data))

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(name)

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    async def scenario() -> None:
        config = server_config(app, limits=LIMITS, host="127.0.0.1", port=1)
        config.load()
        protocol = GuardedHttpToolsProtocol(
            config, ServerState(), {}, _loop=asyncio.get_running_loop()
        )
        transport = Recording()
        protocol.connection_made(transport)
        protocol.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(transport.writes) == 1 and transport.writes[0].startswith(b"HTTP/1.1 200 OK")
        assert transport.writes[0].endswith(b'"messages": ["http.request"]}')
        protocol.data_received(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.writes[1] == b"HTTP/1.1 100 Continue\r\n\r\n"
        protocol.data_received(b"ok")
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(transport.writes) == 3 and b'"body": "ok"' in transport.writes[2]
        protocol.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        assert transport.writes[3].startswith(b"HTTP/1.1 200 OK")
        assert transport.writes[3].endswith(b"transfer-encoding: chunked\r\n\r\n")
        app.released.set()
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert b"".join(transport.writes[4:]) == b"4\r\none,\r\n3\r\ntwo\r\n0\r\n\r\n"
        protocol.connection_lost(None)

    asyncio.run(scenario())


def test_each_request_runs_in_a_task_named_once_for_all(
    serve: Callable[..., tuple[int, App]],
) -> None:
    # Named when made: an unnamed task formats its own `Task-N` first (web/http_protocol.py).
    port, _ = serve()
    sock, buffer = _connect(port), bytearray()
    for _ in range(2):
        sock.sendall(b"GET /task HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock, buffer).split(b"\r\n\r\n", 1)[1] == REQUEST_TASK.encode()
    sock.close()
