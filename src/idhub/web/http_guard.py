"""What both of `idhub serve`'s HTTP protocols (web/http_protocol.py over httptools, the h11
fallback in web/http_server.py) share: the answer to a request cut off by its deadline, and
whether a connection writes the access line."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("idhub.web")

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n\r\n"
    b"request timeout\n"
)


def access_logged(protocol: Any) -> bool:
    """Whether a connection writes uvicorn's access line. uvicorn asks only whether the logger
    has handlers, and then formats the line's arguments (the client address, the path quoted
    again) for every response even when the level (`idhub serve` runs workers at `warning`)
    drops the record: ~2% of a single decision's CPU for nothing. Asked once per connection,
    so a level changed at run time applies to the connections opened after it."""
    logger = protocol.access_logger
    return bool(protocol.access_log) and logger.isEnabledFor(logging.INFO)
