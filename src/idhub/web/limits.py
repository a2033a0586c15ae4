"""What a request may cost, refused before the application reads it.

- a request target longer than `max_request_line` is a 414, more than `max_headers` header
  lines or more than `max_header_bytes` of them a 431 (the server also stops buffering an
  incomplete head at that size, see `web/http_server.py`);
- a declared `Content-Length` over the path's limit is a 413 at once, without reading;
- a body without a length (chunked) is counted as it arrives and refused with a 413 once it
  passes the limit, so no handler ever holds more than the limit in memory;
- a client that goes away before its body is complete costs one quiet log line, not a
  traceback (nobody is left to answer);
- a NUL character in a query parameter or an urlencoded form field is a 400: no parameter of
  any protocol idhub speaks carries one, and PostgreSQL refuses it in text, so it would
  otherwise fail a lookup (a client id, a username) as a server error.

JSON APIs (`/api/...`) take up to `max_api_body` bytes (a full decision batch); everything
else, OAuth forms and sign-in pages, `max_form_body`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("idhub.web")

API_PREFIX = "/api/"


@dataclass(frozen=True)
class RequestLimits:
    max_api_body: int
    max_form_body: int
    max_request_line: int
    max_headers: int
    max_header_bytes: int

    def body_limit(self, path: str) -> int:
        return self.max_api_body if path.startswith(API_PREFIX) else self.max_form_body


class BodyTooLarge(Exception):
    """Raised from `receive` once a streamed body passes the limit."""


class NulInForm(Exception):
    """Raised from `receive` once an urlencoded body turns out to carry a NUL."""


FORM_TYPE = b"application/x-www-form-urlencoded"
_NUL = (b"\x00", b"%00")
NUL_REFUSAL = "a parameter contains a NUL character"


def check_nul_free(data: bytes) -> bool:
    """True when raw or percent-encoded query or form bytes carry no NUL."""
    return not any(nul in data for nul in _NUL)


def _is_form(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            return bytes(value).split(b";")[0].strip().lower() == FORM_TYPE
    return False


async def _refuse(send: Send, status: int, description: str) -> None:
    body = json.dumps({"error": "invalid_request", "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                # The rest of the body is never read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class LimitsMiddleware:
    def __init__(self, app: ASGIApp, *, limits: RequestLimits) -> None:
        self.app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self._limits
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if target > limits.max_request_line:
            too_long = f"the request target is longer than {limits.max_request_line} bytes"
            await _refuse(send, 414, too_long)
            return
        headers = scope.get("headers", [])
        if len(headers) > limits.max_headers:
            await _refuse(send, 431, f"more than {limits.max_headers} header lines")
            return
        if target + sum(len(k) + len(v) + 4 for k, v in headers) > limits.max_header_bytes:
            await _refuse(send, 431, f"the request head is larger than {limits.max_header_bytes}")
            return
        if not check_nul_free(scope.get("query_string") or b""):
            await _refuse(send, 400, NUL_REFUSAL)
            return
        limit = limits.body_limit(str(scope.get("path", "")))
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, f"the request body is larger than {limit} bytes")
            return
        await self._capped(scope, receive, send, limit)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        started = False
        form = _is_form(scope)
        tail = b""  # a `%00` may straddle two chunks

        async def capped_receive() -> Message:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge
                if form:
                    if not check_nul_free(tail + chunk):
                        raise NulInForm
                    tail = (tail + chunk)[-2:]
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await _refuse(send, 413, f"the request body is larger than {limit} bytes")
        except NulInForm:
            if not started:
                await _refuse(send, 400, NUL_REFUSAL)
        except ClientDisconnect:
            request_id = scope.get("state", {}).get("request_id", "-")
            log.info("request %s: the client went away before its body was complete", request_id)
