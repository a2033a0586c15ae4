"""The HTTP/1.1 protocol `idhub serve` runs: uvicorn's httptools protocol with its per-request
callbacks and its request-response cycle written again with less work per request, plus
idhub's guards (a deadline for each whole request, a cap on an incomplete head).

Kept from uvicorn (inherited): connection set-up, the header callback, WebSocket upgrades,
the 400 for unparsable input, graceful shutdown, flow control (`FlowControl`, pause/resume
of reading and writing), task bookkeeping. Written here, with the same behaviour:

- one watchdog timer per connection instead of two timers per request (uvicorn's keep-alive
  timer and the guard's request deadline were each created and cancelled for every
  request). The connection records *when* something is due (`_due`); the timer fires at most
  `_tick` seconds after it was set, and re-arms itself when the due time moved later, so a
  request costs a clock read, not a timer;
- the request waits for its body on a bare future created only when it has to wait, with an
  event's semantics (`_Exchange.wake`), instead of an `asyncio.Event` per request;
- the response head is built in one pass (header names checked once per distinct name,
  the values with one scan) and, when its length is declared, held back until the body
  comes, so head and body leave in one `transport.write` (one syscall and one segment with
  TCP_NODELAY), without scheduling a flush callback per request. A chunked response (a
  stream) writes its head at once;
- the request body is kept as a list of chunks (joined once per `receive`).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import math
import urllib.parse
from typing import Any

import httptools
import uvicorn
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from idhub.web.http_guard import REQUEST_TIMEOUT_RESPONSE, access_logged, log

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Response header names already checked, mapped to their lower case: an application sends
# the same few dozen names again and again. Bounded, so odd names cannot grow it for ever.
_NAMES: dict[bytes, bytes] = {}
_MAX_NAMES = 512
# The watchdog's longest sleep; also its shortest, so that a zero timeout cannot spin it.
_MIN_TICK = 0.05
# The name of every request's task. Without one, each task formats its own `Task-N` when it
# is made (Python 3.11's C task; uvloop's `create_task` only renames it afterwards).
REQUEST_TASK = "idhub-request"


def _checked_name(name: bytes) -> bytes:
    """A response header name in lower case, refused as uvicorn refuses it."""
    lower = _NAMES.get(name)
    if lower is None:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        lower = name.lower()
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[name] = lower
    return lower


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Per connection: `_receiving` from a request's first byte to
    its last, `_head` the head bytes seen while inside a head, `_due` when the watchdog acts
    (None: a response is being made, nothing is due)."""

    cycle: Any  # an `_Exchange` (uvicorn's shutdown reads `response_complete`, `keep_alive`)

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.access_log = access_logged(self)
        self._request_timeout = float(getattr(config, "request_timeout", 10.0))
        self._keep_alive = float(self.timeout_keep_alive)
        self._tick = max(min(self._request_timeout, self._keep_alive), _MIN_TICK)
        self._max_head = int(config.h11_max_incomplete_event_size or 16 * 1024)
        self._head: int | None = None
        self._receiving = False
        self._upgrading = False
        self._due: float | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = math.inf

    # ------------------------------------------------------------------ the watchdog

    def _expect(self, delay: float) -> None:
        """Something is due in `delay` seconds: the request's end, or the next request."""
        now = self.loop.time()
        due = self._due = now + delay
        # The timer, if any, was set at most `_tick` ago to fire at most `_tick` after that,
        # and delays are at least `_tick`: it fires before `due`, and only a zero keep-alive
        # timeout below `_MIN_TICK` comes here.
        if due < self._watch_at:
            self._schedule(now, due)

    def _schedule(self, now: float, due: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        at = self._watch_at = min(due, now + self._tick)
        self._watch = self.loop.call_later(at - now, self._watchdog)

    def _stop_watch(self) -> None:
        self._due = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._watch_at = math.inf

    def _watchdog(self) -> None:
        self._watch = None
        self._watch_at = math.inf
        due = self._due
        if due is None or self.transport.is_closing():
            return  # a response is being made: the next `_expect` sets a timer again
        now = self.loop.time()
        if due > now:
            self._schedule(now, due)
            return
        self._due = None
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if self._receiving and not answering:
            log.info("request not complete within %.0fs: connection closed", self._request_timeout)
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()

    def _settle(self) -> None:
        """After a request arrived or a response left: the next request is awaited (keep-alive
        timeout) unless a request is still arriving (its deadline stays) or a response is
        still being made (nothing is due)."""
        if self._receiving:
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._expect(self._keep_alive)
        else:
            self._due = None

    def _begin(self) -> None:
        self._receiving = True
        self._expect(self._request_timeout)

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # A connection that never sends a byte is closed (silently) after the deadline.
        self._expect(self._request_timeout)

    def data_received(self, data: bytes) -> None:
        if not self._receiving:
            self._begin()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._stop_watch()  # the WebSocket protocol owns the connection now
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self._head is None:
            return
        # Still inside a head: all of this chunk from the request's start is head. llhttp
        # keeps no head itself, but the header list would grow without bound.
        self._head += len(data)
        if self._head > self._max_head:
            self._stop_watch()
            self.send_400_response("the request head is too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = "{}:{} - ".format(*self.client) if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection lost", prefix)
        self._stop_watch()
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True
            cycle.wake()
        if self.flow is not None:
            self.flow.resume_writing()
        if exc is None:
            self.transport.close()
        self.parser = None  # type: ignore[assignment]

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """uvicorn's, with the task made as the loop's `create_task` makes it when no task
        factory is set (the loop's task class, the same context rule), but named."""
        loop = self.loop
        context = contextvars.Context() if self.config.reset_contextvars else None
        if loop.get_task_factory() is None:
            task = asyncio.Task(cycle.run_asgi(app), loop=loop, name=REQUEST_TASK, context=context)
        else:
            task = loop.create_task(cycle.run_asgi(app), name=REQUEST_TASK, context=context)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if not self._receiving:
            self._begin()
        self._head = 0
        self._upgrading = False
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        self._head = None
        parser = self.parser
        http_version = parser.get_http_version()
        headers = self.headers
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "root_path": self.root_path,
            "headers": headers,
            "state": self.app_state.copy(),
            "method": parser.get_method().decode("ascii"),
        }
        self.scope = scope  # type: ignore[assignment]
        if parser.should_upgrade() and self._should_upgrade():
            self._upgrading = True
            return
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root = self.root_path
        scope["path"] = root + path
        scope["raw_path"] = root.encode("ascii") + raw_path if root else raw_path
        scope["query_string"] = parsed.query or b""

        limit = self.limit_concurrency
        app = self.app
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")

        previous = self.cycle
        self.cycle = cycle = _Exchange(
            self,
            scope,
            keep_alive=http_version != "1.0" and parser.should_keep_alive(),
            expect_100_continue=self.expect_100_continue,
        )
        if previous is None or previous.response_complete:
            self._start_asgi_task(cycle, app)
        else:
            # Pipelined: answered in order, and nothing more is read until this one starts.
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))  # type: ignore[arg-type]

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if self._upgrading or cycle.response_complete:
            return
        cycle.chunks.append(body)
        cycle.size += len(body)
        if cycle.size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        self._receiving = False
        cycle = self.cycle
        if not self._upgrading and not cycle.response_complete:
            cycle.more_body = False
            cycle.wake()
        self._settle()

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        self._settle()


class _Exchange:
    """One request and its response: what uvicorn's `RequestResponseCycle` is to the
    protocol (the attributes the protocol and uvicorn's shutdown read keep their names)."""

    __slots__ = (
        "chunks",
        "disconnected",
        "finished",
        "framing",
        "head",
        "keep_alive",
        "more_body",
        "protocol",
        "remaining",
        "response_complete",
        "response_started",
        "scope",
        "signalled",
        "size",
        "transport",
        "waiter",
        "waiting_for_100_continue",
    )

    def __init__(
        self,
        protocol: GuardedHttpToolsProtocol,
        scope: dict[str, Any],
        *,
        keep_alive: bool,
        expect_100_continue: bool,
    ) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.scope = scope
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.disconnected = False
        # Request body received and not yet handed over; more to come until the message ends.
        self.chunks: list[bytes] = []
        self.size = 0
        self.more_body = True
        # An event's state without an `asyncio.Event`: set by news (body, end, disconnect,
        # response complete), cleared by `receive`; a future only when `receive` must wait.
        self.signalled = False
        self.waiter: asyncio.Future[None] | None = None
        self.response_started = False
        self.response_complete = False
        # None: neither length nor chunked declared (yet); True: chunked; False: a length.
        self.framing: bool | None = None
        self.remaining = 0
        self.head: bytes | None = None
        self.finished = False

    def wake(self) -> None:
        self.signalled = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run_asgi(self, app: Any) -> None:
        logger = self.protocol.logger
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500()
            else:
                self._close()
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._close()
            elif not self.response_started and not self.disconnected:
                logger.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                logger.error("ASGI callable returned without completing response.")
                self._close()
        finally:
            # A response completed later (by a task the app left behind) starts no next one.
            self.finished = True

    def _close(self) -> None:
        # A head held for its body goes out first, as it would have without holding it.
        if self.head is not None and not self.transport.is_closing():
            self.transport.write(self.head)
        self.head = None
        self.transport.close()

    async def _send_500(self) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"21"),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    def _build_head(self, status: int, headers: Any) -> bytes:
        parts = [STATUS_LINE[status]]
        values = []
        has_close = False
        known = _NAMES.get  # the table read here: a call of `_checked_name` per line cost more
        for name, value in itertools.chain(self.protocol.server_state.default_headers, headers):
            name = known(name) or _checked_name(name)
            values.append(value)
            if name == b"content-length":
                if self.framing is None:
                    self.remaining = int(value)
                    self.framing = False
            elif name == b"transfer-encoding":
                if value.lower() == b"chunked":
                    self.remaining = 0
                    self.framing = True
            elif name == b"connection":
                if b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    has_close = True
            parts += (name, b": ", value, b"\r\n")
        # One scan of all values together: the pattern is a character class.
        if HEADER_VALUE_RE.search(b"".join(values)):
            raise RuntimeError("Invalid HTTP header value.")
        if not self.keep_alive and not has_close:
            parts.append(b"connection: close\r\n")
        if self.framing is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.framing = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    async def send(self, message: Any) -> None:
        flow = self.protocol.flow
        if flow.write_paused and not self.disconnected:
            await flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            self._start(message)
        elif self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already "
                "completed."
            )
        else:
            self._write_body(message)

    def _start(self, message: Any) -> None:
        kind = message["type"]
        if kind != "http.response.start":
            raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
        self.response_started = True
        self.waiting_for_100_continue = False
        status = message["status"]
        protocol = self.protocol
        if protocol.access_log:
            scope = self.scope
            protocol.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),  # type: ignore[arg-type]
                scope["method"],
                get_path_with_query_string(scope),  # type: ignore[arg-type]
                scope["http_version"],
                status,
            )
        head = self._build_head(status, message.get("headers", ()))
        if self.framing:
            self.transport.write(head)  # a stream: its head leaves at once
        else:
            self.head = head

    def _write_body(self, message: Any) -> None:
        kind = message["type"]
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            self.remaining = 0
            data = b""
        elif self.framing:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += b"0\r\n\r\n"
        else:
            if len(body) > self.remaining:
                raise RuntimeError("Response content longer than Content-Length")
            self.remaining -= len(body)
            data = body
        if self.head is not None:
            data = self.head + data
            self.head = None
        if data:
            self.transport.write(data)
        if not more_body:
            if self.remaining != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.wake()
            if not self.keep_alive:
                self.transport.close()
            if not self.finished:
                self.protocol.on_response_complete()

    async def receive(self) -> dict[str, Any]:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.protocol.flow.resume_reading()
            if not self.signalled:
                waiter = self.waiter = self.protocol.loop.create_future()
                try:
                    await waiter
                finally:
                    self.waiter = None
            self.signalled = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.size = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}
