"""Per-request context: a request id (honouring a sane inbound `X-Request-ID`) and the
client address and user agent that audit events carry."""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from idhub.core.audit import RequestContext

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = ""
        for key, value in scope.get("headers", []):
            if key == b"x-request-id":
                inbound = value.decode("latin-1")
                break
        request_id = inbound if _REQUEST_ID.match(inbound) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def request_context(request: Request) -> RequestContext:
    client = request.client.host if request.client else None
    agent = request.headers.get("user-agent")
    return RequestContext(
        client_ip=client,
        user_agent=agent[:500] if agent else None,
        request_id=getattr(request.state, "request_id", None),
    )
