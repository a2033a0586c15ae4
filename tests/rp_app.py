"""A small real relying party for back-channel logout tests: a Starlette app served by uvicorn
in a thread on a free port. It validates each logout token the way OpenID Connect Back-Channel
Logout 1.0 §2.6 asks (signature against idhub's /jwks, iss, aud, iat/exp, typ, events, sid or
sub, no nonce) and remembers what it accepted or rejected."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass
class LogoutRp:
    issuer: str
    url: str = ""
    # client_id -> claims of every valid logout token received for it
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    # Answer this many deliveries with 503 before accepting (to exercise retries).
    fail_next: int = 0
    hits: int = 0
    callbacks: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def uri(self, client_id: str) -> str:
        return f"{self.url}/backchannel/{client_id}"

    def validate(self, token: str, client_id: str) -> dict[str, Any]:
        keys = KeySet.import_key_set(httpx.get(f"{self.issuer}/jwks", timeout=5).json())
        decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256", "EdDSA"])
        if decoded.header.get("typ") != "logout+jwt":
            raise ValueError(f"typ is {decoded.header.get('typ')!r}")
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": client_id},
            iat={"essential": True},
            exp={"essential": True},
            jti={"essential": True},
        )
        registry.validate(claims)
        if BACKCHANNEL_EVENT not in (claims.get("events") or {}):
            raise ValueError("no back-channel logout event")
        if "nonce" in claims:
            raise ValueError("a logout token must not carry a nonce")
        if not claims.get("sid") and not claims.get("sub"):
            raise ValueError("neither sid nor sub")
        return dict(claims)

    def app(self) -> Starlette:
        async def backchannel(request: Request) -> Response:
            client_id = request.path_params["client_id"]
            form = await request.form()
            token = form.get("logout_token")
            with self._lock:
                self.hits += 1
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return JSONResponse({"error": "temporarily_unavailable"}, status_code=503)
            if not isinstance(token, str):
                self.rejected.append("no logout_token")
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            try:
                claims = self.validate(token, client_id)
            except (JoseError, ValueError) as exc:
                self.rejected.append(f"{type(exc).__name__}: {exc}")
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            with self._lock:
                self.received.append({**claims, "_client": client_id})
            return Response(status_code=200, headers={"Cache-Control": "no-store"})

        async def callback(request: Request) -> Response:
            # Where the browser lands after signing in; the test exchanges the code itself.
            with self._lock:
                self.callbacks.append(str(request.url))
            ok = "code" in request.query_params
            title = "RP callback: signed in" if ok else "RP callback: error"
            body = f"<!doctype html><title>{title}</title><h1 id=result>{title}</h1>"
            return HTMLResponse(body, status_code=200 if ok else 400)

        return Starlette(
            routes=[
                Route("/backchannel/{client_id}", backchannel, methods=["POST"]),
                Route("/callback", callback, methods=["GET"]),
            ]
        )

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(
            f"expected {count} logout tokens, got {len(self.received)}; rejected: {self.rejected}"
        )


@contextlib.contextmanager
def running_rp(issuer: str, port: int) -> Iterator[LogoutRp]:
    from tests.conftest import serve_asgi

    rp = LogoutRp(issuer=issuer, url=f"http://127.0.0.1:{port}")
    with serve_asgi(rp.app(), port):
        yield rp
