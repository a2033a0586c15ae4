"""ASGI middleware for a Starlette (or any ASGI) system: requires an idhub access token for its
audience and puts the validated claims in `request.state.idhub_claims`. Errors follow RFC 6750."""

from __future__ import annotations

from collections.abc import Collection

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from idhub.sdk.tokens import InvalidToken, TokenValidator


class BearerAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        validator: TokenValidator,
        exempt_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.validator = validator
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        header = ""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await _challenge(scope, receive, send, None)
            return
        try:
            claims = self.validator.validate(token.strip())
        except InvalidToken:
            await _challenge(scope, receive, send, "invalid_token")
            return
        scope.setdefault("state", {})["idhub_claims"] = claims
        await self.app(scope, receive, send)


async def _challenge(scope: Scope, receive: Receive, send: Send, error: str | None) -> None:
    challenge = 'Bearer realm="idhub"' + (f', error="{error}"' if error else "")
    body = {
        "error": error or "invalid_request",
        "error_description": "a valid bearer token is required",
    }
    response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})
    await response(scope, receive, send)
