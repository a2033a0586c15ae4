"""Per-request context: a request id (honouring a sane inbound `X-Request-ID`) and the
client address and user agent that audit events carry. The client address is the one
`TrustedProxies` (web/proxies.py) decides, the same with one worker or many."""

from __future__ import annotations

import os
import random
import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idhub.core.audit import RequestContext
from idhub.web.proxies import TrustedProxies

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


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, proxies: TrustedProxies | None = None) -> None:
        self.app = app
        self.proxies = proxies or TrustedProxies(())
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = ""
        for key, value in scope.get("headers", []):
            if key == b"x-request-id":
                inbound = value.decode("latin-1")
                break
        request_id = inbound if _REQUEST_ID.match(inbound) else self._ids.new()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        peer = scope.get("client")
        client = self.proxies.client_address(peer[0] if peer else None, scope.get("headers", []))
        state["client_ip"] = client
        if peer and client and client != peer[0]:
            # The access log and anything reading `request.client` see the same address.
            scope["client"] = (client, 0)

        line = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), line]
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_context(request: Request) -> RequestContext:
    client = getattr(request.state, "client_ip", None)
    if client is None and request.client:
        client = request.client.host
    agent = request.headers.get("user-agent")
    return RequestContext(
        client_ip=client,
        user_agent=agent[:500] if agent else None,
        request_id=getattr(request.state, "request_id", None),
    )
