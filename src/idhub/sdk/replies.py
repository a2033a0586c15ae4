"""`Reply`: what a framework-free SDK helper wants sent back — status, headers and an optional
JSON body — so Flask, Django, Starlette or a bare WSGI app can send it in one line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")

    def all_headers(self) -> dict[str, str]:
        """The headers, with the JSON content type when there is a body."""
        if self.body is None:
            return dict(self.headers)
        return {**self.headers, "Content-Type": "application/json"}
