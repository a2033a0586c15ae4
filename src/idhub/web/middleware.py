"""The one request layer around the router (`RequestLayer`), and the per-request context it
sets up: a request id (honouring a sane inbound `X-Request-ID`) and the client address and
user agent that audit events carry. The client address is the one `TrustedProxies`
(web/proxies.py) decides, the same with one worker or many."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idhub.core.audit import RequestContext
from idhub.web.errors import FailureAnswers, Handler
from idhub.web.limits import (
    RequestLimits,
    body_refusal,
    capped_receive,
    check_form_type,
    refuse,
    request_refusal,
)
from idhub.web.observe import RequestObserver
from idhub.web.proxies import TrustedProxies
from idhub.web.security_headers import STATIC_PREFIX, ResponseHeaders

log = logging.getLogger("idhub.web")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


_GENERATOR = random.Random()  # noqa: S311 - an id, not a secret
# Workers are spawned today, but a process forked after the app was built (a pre-forking
# server, a test) must not hand out its parent's sequence of ids: one hook for the process,
# not one per app built.
os.register_at_fork(after_in_child=_GENERATOR.seed)


class RequestIds:
    """Fresh request ids: 64 random bits each, as 16 hex digits, from a generator seeded from
    the operating system once per process. A request id ties the log lines and audit events of
    one request together and guards nothing (a client may even choose its own), so it need not
    come from the kernel's CSPRNG: `secrets.token_hex` cost a system call per request, ~4% of
    a single decision's CPU on the event loop (docs/performance.md, Authorization)."""

    def __init__(self) -> None:
        self._bits = _GENERATOR.getrandbits

    def new(self) -> str:
        return f"{self._bits(64):016x}"


class RequestLayer:
    """The one ASGI layer between the server and the router. Per request it

    - gives the request its id (a sane inbound `X-Request-ID`, else a fresh one) and the
      client address `TrustedProxies` decides (`state.request_id`, `state.client_ip`);
    - refuses a head or a body over the limits (web/limits.py) and counts the body as it
      arrives;
    - answers an exception that left the application (web/errors.py `FailureAnswers`): no
      traceback, and an answer even for a database failure no store translated;
    - sends every answer with the security headers and the request id (web/security_headers.py);
    - reports the request's route, status and time when it is over (web/observe.py).

    These were seven nested middlewares (Starlette's two among them), each wrapping `send` and
    re-checking the message type on every message; one layer does one header scan, builds
    one `send` and one `receive` wrapper, and touches each response start once. What each
    used to see it still sees: a refusal, an error page and a 500 carry the request id and
    the security headers and are counted under their status.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        proxies: TrustedProxies,
        limits: RequestLimits,
        headers: ResponseHeaders,
        observer: RequestObserver,
        failures: FailureAnswers,
    ) -> None:
        self.app = app
        self._proxies = proxies
        self._limits = limits
        self._headers = headers
        self._observer = observer
        self._failures = failures
        # Read by Starlette's `request_response` around each function endpoint.
        self._scope_handlers: tuple[dict[Any, Handler], dict[int, Handler]] = (
            failures.handlers,
            {},
        )
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, content_type, length, head_bytes = self._context(scope)
        path: str = scope["path"]
        static = path.startswith(STATIC_PREFIX)
        id_line = (b"x-request-id", request_id.encode("latin-1"))
        head = self._headers.head  # positional: a keyword call costs more on every answer
        status = 0  # the answer's, once it has started

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = head(message.get("headers", ()), static, id_line)
            await send(message)

        try:
            limit = self._limits.body_limit(path)
            refusal = request_refusal(
                self._limits, scope, head_bytes=head_bytes, length=length, limit=limit
            )
            if refusal is not None:
                await refuse(answer, *refusal)
                return
            form = content_type is not None and check_form_type(content_type)
            try:
                await self.app(scope, capped_receive(receive, limit, form=form), answer)
            except Exception as exc:
                await self._failed(exc, scope, receive, answer, limit, started=status != 0)
        finally:
            self._observer.report(scope, status or 500, time.perf_counter() - started)

    def _context(self, scope: Scope) -> tuple[str, bytes | None, bytes | None, int]:
        """Sets the request id and client address in `state`; returns the id, the
        `Content-Type` and `Content-Length` values and the headers' size on the wire, from one
        pass over the head (of a repeated header the first line counts, as before)."""
        headers = scope["headers"]
        inbound: bytes | None = None
        content_type: bytes | None = None
        length: bytes | None = None
        head_bytes = 0
        for key, value in headers:
            head_bytes += len(key) + len(value) + 4
            if key == b"x-request-id":
                inbound = value if inbound is None else inbound
            elif key == b"content-type":
                content_type = value if content_type is None else content_type
            elif key == b"content-length":
                length = value if length is None else length
        # A sane inbound id is kept; without the header there is nothing to match.
        text = inbound.decode("latin-1") if inbound is not None else None
        request_id = text if text is not None and _REQUEST_ID.match(text) else self._ids.new()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        peer = scope.get("client")
        client = self._proxies.client_address(peer[0] if peer else None, headers)
        state["client_ip"] = client
        if peer and client and client != peer[0]:
            # The access log and anything reading `request.client` see the same address.
            scope["client"] = (client, 0)
        scope["starlette.exception_handlers"] = self._scope_handlers
        return request_id, content_type, length, head_bytes

    async def _failed(
        self,
        exc: Exception,
        scope: Scope,
        receive: Receive,
        answer: Send,
        limit: int,
        *,
        started: bool,
    ) -> None:
        """Answers `exc` if it can still be answered; re-raises what is not idhub's to swallow
        (the server then logs it and closes the connection)."""
        handled = self._failures.handled(exc)
        if handled is not None:
            if started:
                raise exc
            handler, error = handled
            try:
                response = await handler(Request(scope, receive), error)
            except Exception as failed:
                # The error answer itself failed: the last resort below answers that, as
                # Starlette's error middleware outside its exception middleware did.
                exc = failed
            else:
                await response(scope, receive, answer)
                return
        refusal = body_refusal(exc, limit)
        if refusal is not None:
            if not started:
                await refuse(answer, *refusal)
            return
        if isinstance(exc, ClientDisconnect):
            request_id = scope["state"]["request_id"]
            log.info("request %s: the client went away before its body was complete", request_id)
            return
        response = await self._failures.unexpected(Request(scope, receive), exc)  # logs it
        if not started:
            await response(scope, receive, answer)
        # As Starlette's last-resort handler did: the server logs it too.
        raise exc


def request_context(request: Request) -> RequestContext:
    return scope_context(request.scope)


def scope_context(scope: Scope) -> RequestContext:
    """What `request_context` reads, from the scope itself (no `Request`, `State` and
    `Headers` objects): the address the layer decided (else the peer's), the first
    `User-Agent` line as Starlette's `Headers.get` takes it, and the request id."""
    state = scope.setdefault("state", {})
    client = state.get("client_ip")
    peer = scope.get("client")
    if client is None and peer:
        client = peer[0]
    agent: str | None = None
    for key, value in scope["headers"]:
        if key == b"user-agent":
            agent = value.decode("latin-1")
            break
    return RequestContext(
        client_ip=client,
        user_agent=agent[:500] if agent else None,
        request_id=state.get("request_id"),
    )
