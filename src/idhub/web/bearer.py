"""Bearer-token protection for idhub's own APIs (contract 3).

`require_bearer(request, services, scope="authz")` returns the claims of a valid access token
whose `aud` contains `idhub` and whose `scope` contains `scope`, or raises `BearerError`, which
the route turns into an RFC 6750 answer with `error_response(exc)`.
"""

from __future__ import annotations

import hashlib
import threading
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


# Verified tokens a process remembers for the event-loop check (cleared when full).
VERIFIED_LIMIT = 10_000


class VerifiedBearers:
    """Claims of idhub-audience access tokens this process has fully verified, by the SHA-256
    of the token (the map holds no token), each until its `exp`.

    What a remembered token skips is only what cannot change for the same bytes: the form,
    the signature, the issuer, the audience and `iat` (time only moves on). Expiry is looked
    at on every use, and revocation too (`verify_bearer_without_waiting`), so a remembered
    token is refused the moment it expires or is revoked, as a full verification would."""

    def __init__(self, clock: Any, *, limit: int = VERIFIED_LIMIT) -> None:
        self._clock = clock
        self._limit = limit
        self._claims: dict[bytes, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def remember(self, token: str, claims: dict[str, Any]) -> None:
        key = hashlib.sha256(token.encode()).digest()
        with self._lock:
            if len(self._claims) >= self._limit:
                self._claims.clear()  # strangers' tokens must not grow memory without bound
            self._claims[key] = dict(claims)

    def recall(self, token: str) -> dict[str, Any] | None:
        """The remembered claims while the token is unexpired, else None (then forgotten)."""
        key = hashlib.sha256(token.encode()).digest()
        claims = self._claims.get(key)
        if claims is None:
            return None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self._clock.now():
            with self._lock:
                self._claims.pop(key, None)
            return None
        return claims


def verify_bearer(
    token: str | None, services: Services, remember: VerifiedBearers | None = None
) -> dict[str, Any]:
    """Claims of a valid idhub access token, whatever its scope (touches the revocation list:
    for worker threads); raises `BearerError`. A token that passes goes into `remember`."""
    if not token:
        raise BearerError(401, "invalid_token", "an access token is required")
    try:
        claims = services.access_tokens.verify(token, audience=IDHUB_AUDIENCE)
    except InvalidToken:
        raise BearerError(401, "invalid_token", "the access token is not valid") from None
    if remember is not None:
        remember.remember(token, claims)
    return claims


def verify_bearer_without_waiting(
    token: str | None, services: Services, remembered: VerifiedBearers
) -> dict[str, Any] | None:
    """`verify_bearer` on the event loop for a token verified before: its claims, or None when
    the answer needs a worker thread (a token not remembered, or expired: the full check then
    refuses it; a revocation list that cannot be read without waiting). Raises `BearerError`
    for a missing or revoked token."""
    if not token:
        raise BearerError(401, "invalid_token", "an access token is required")
    claims = remembered.recall(token)
    if claims is None:
        return None
    revoked = services.revocations.is_revoked_without_waiting(str(claims["jti"]))
    if revoked is None:
        return None
    if revoked:
        raise BearerError(401, "invalid_token", "the access token is not valid")
    return dict(claims)


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
