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

The one request layer (web/middleware.py) applies these to every request. JSON APIs
(`/api/...`) take up to `max_api_body` bytes (a full decision batch); everything
else, OAuth forms and sign-in pages, `max_form_body`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.types import Message, Receive, Scope, Send

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
NUL_REFUSAL = "a parameter contains a NUL character"


def check_nul_free(data: bytes) -> bool:
    """True when raw or percent-encoded query or form bytes carry no NUL.

    `find`, not the `in` operator: `bytes.__contains__` first tries its operand as an
    integer (`65 in b"A"`), and for a bytes operand that raises a TypeError, its message
    formatted, which it then clears: ~1,000 instructions more per test than `find`
    (callgrind), four tests per form request here (two of the query, two of the body).
    `find` takes a bytes operand at once and answers the same."""
    return data.find(b"\x00") < 0 and data.find(b"%00") < 0


async def refuse(send: Send, status: int, description: str) -> None:
    """The JSON refusal of a request the limits turn away, before or while reading it."""
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


def request_refusal(
    limits: RequestLimits, scope: Scope, *, head_bytes: int, length: bytes | None, limit: int
) -> tuple[int, str] | None:
    """(status, reason) when the request is refused before its body is read: by its head, or
    by a declared `length` over the path's `limit`. `head_bytes`: the headers' size on the
    wire (name, value, ": " and CRLF each)."""
    query: bytes = scope.get("query_string") or b""
    target = len(scope.get("raw_path") or b"") + len(query)
    if target > limits.max_request_line:
        return 414, f"the request target is longer than {limits.max_request_line} bytes"
    if len(scope["headers"]) > limits.max_headers:
        return 431, f"more than {limits.max_headers} header lines"
    if target + head_bytes > limits.max_header_bytes:
        return 431, f"the request head is larger than {limits.max_header_bytes}"
    if not check_nul_free(query):
        return 400, NUL_REFUSAL
    declared = declared_length(length) if length is not None else None
    if declared is not None and declared > limit:
        return 413, f"the request body is larger than {limit} bytes"
    return None


def body_refusal(exc: BaseException, limit: int) -> tuple[int, str] | None:
    """(status, reason) for an exception `capped_receive` raised, else None."""
    if isinstance(exc, BodyTooLarge):
        return 413, f"the request body is larger than {limit} bytes"
    if isinstance(exc, NulInForm):
        return 400, NUL_REFUSAL
    return None


def capped_receive(receive: Receive, limit: int, *, form: bool) -> Receive:
    """`receive` counting the body as it arrives: past `limit` bytes it raises `BodyTooLarge`,
    and in an urlencoded form (`form`) a NUL raises `NulInForm`, so no handler ever holds
    more than the limit or a NUL-carrying parameter."""
    received = 0
    tail = b""  # a `%00` may straddle two chunks

    async def capped() -> Message:
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

    return capped


def check_form_type(content_type: bytes) -> bool:
    return content_type.split(b";")[0].strip().lower() == FORM_TYPE


def declared_length(value: bytes) -> int | None:
    """A `Content-Length` value as a number, None when it is none."""
    try:
        return int(value)
    except ValueError:
        return None
