"""Bearer-token protection for idhub's own APIs (contract 3).

`require_bearer(request, services, scope="authz")` returns the claims of a valid access token
whose `aud` contains `idhub` and whose `scope` contains `scope`, or raises `BearerError`, which
the route turns into an RFC 6750 answer with `error_response(exc)`.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from idhub.bootstrap import Services
from idhub.core.clients import IDHUB_AUDIENCE
from idhub.oidc.tokens import InvalidToken
from idhub.web.oauth import bearer_token


class BearerError(Exception):
    def __init__(self, status: int, error: str, description: str, scope: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope

    def response(self) -> JSONResponse:
        challenge = 'Bearer realm="idhub"'
        if self.error:
            challenge += f', error="{self.error}", error_description="{self.description}"'
        if self.scope:
            challenge += f', scope="{self.scope}"'
        body = {"error": self.error or "invalid_token", "error_description": self.description}
        return JSONResponse(
            body,
            status_code=self.status,
            headers={"WWW-Authenticate": challenge, "Cache-Control": "no-store"},
        )


def error_response(exc: BearerError) -> JSONResponse:
    return exc.response()


def verify_bearer(token: str | None, services: Services) -> dict[str, Any]:
    """Claims of a valid idhub access token, whatever its scope (touches the revocation list:
    for worker threads); raises `BearerError`."""
    if not token:
        raise BearerError(401, "invalid_token", "an access token is required")
    try:
        return services.access_tokens.verify(token, audience=IDHUB_AUDIENCE)
    except InvalidToken:
        raise BearerError(401, "invalid_token", "the access token is not valid") from None


def verify_bearer_without_waiting(token: str | None, services: Services) -> dict[str, Any] | None:
    """`verify_bearer` on the event loop: the claims, or None when the answer needs a worker
    thread (`AccessTokens.verify_without_waiting`: a token whose signature this process has
    not checked, a revocation list that cannot be read without waiting, a client registry due
    for its version check). Raises `BearerError` for a missing, expired, foreign or revoked
    token, or one whose client is disabled or removed."""
    if not token:
        raise BearerError(401, "invalid_token", "an access token is required")
    try:
        return services.access_tokens.verify_without_waiting(token, audience=IDHUB_AUDIENCE)
    except InvalidToken:
        raise BearerError(401, "invalid_token", "the access token is not valid") from None


def require_scope(claims: dict[str, Any], scope: str | None) -> dict[str, Any]:
    if scope is not None and scope not in str(claims.get("scope", "")).split():
        raise BearerError(403, "insufficient_scope", f"the token lacks scope {scope}", scope=scope)
    return claims


def check_bearer(token: str | None, services: Services, *, scope: str | None) -> dict[str, Any]:
    """The synchronous check (touches the revocation list): for worker threads."""
    return require_scope(verify_bearer(token, services), scope)


async def require_bearer(
    request: Request, services: Services, scope: str | None = None
) -> dict[str, Any]:
    """Claims of the request's bearer token for idhub's APIs; raises `BearerError`."""
    return await run_in_threadpool(check_bearer, bearer_token(request), services, scope=scope)
