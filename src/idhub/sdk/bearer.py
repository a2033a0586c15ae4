"""Bearer tokens (RFC 6750) for any framework, as plain functions: read the token from the
`Authorization` header, validate it, and turn a refusal into the challenge to send back.

Flask:

    from flask import Flask, g, request
    from idhub.sdk import TokenValidator, InvalidToken
    from idhub.sdk.bearer import authenticate, challenge

    app = Flask(__name__)
    validator = TokenValidator.from_discovery("https://sso.example.com", audience="reimburse")

    @app.before_request
    def require_idhub_token():
        try:
            g.claims = authenticate(validator, request.headers.get("Authorization"))
        except InvalidToken as exc:
            reply = challenge(exc)
            return reply.body_bytes(), reply.status, reply.all_headers()

Django (a middleware in `settings.MIDDLEWARE`):

    from django.http import HttpResponse
    from idhub.sdk import TokenValidator, InvalidToken
    from idhub.sdk.bearer import authenticate, challenge

    validator = TokenValidator.from_discovery("https://sso.example.com", audience="reimburse")

    def idhub_bearer(get_response):
        def middleware(request):
            try:
                request.idhub_claims = authenticate(validator, request.headers.get("Authorization"))
            except InvalidToken as exc:
                r = challenge(exc)
                return HttpResponse(r.body_bytes(), status=r.status, headers=r.all_headers())
            return get_response(request)
        return middleware
"""

from __future__ import annotations

from typing import Any

from idhub.sdk.errors import InvalidToken, MalformedToken, MissingToken
from idhub.sdk.replies import Reply
from idhub.sdk.tokens import TokenValidator

REALM = "idhub"


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value; `MissingToken` when
    there is none, `MalformedToken` when the header is something else."""
    if authorization is None or not authorization.strip():
        raise MissingToken("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken(f"the Authorization scheme is {scheme!r}, not Bearer")
    token = token.strip()
    if not token or " " in token:
        raise MalformedToken("the Bearer credentials are not one token")
    return token


def authenticate(validator: TokenValidator, authorization: str | None) -> dict[str, Any]:
    """The validated claims of the request's bearer token; a subclass of `InvalidToken`."""
    return validator.validate(bearer_token(authorization))


def challenge(exc: InvalidToken, *, realm: str = REALM) -> Reply:
    """The RFC 6750 answer to a refused token: 401 with `WWW-Authenticate` (503 when idhub
    could not be asked). The reason stays in your logs, never in the answer."""
    header = f'Bearer realm="{realm}"'
    if exc.error is not None and exc.status == 401:
        header += f', error="{exc.error}"'
    body = {
        "error": exc.error or "invalid_request",
        "error_description": "a valid bearer token is required"
        if exc.status == 401
        else "the token cannot be checked now; try again later",
    }
    headers = {"WWW-Authenticate": header, "Cache-Control": "no-store"}
    if exc.status != 401:
        headers = {"Retry-After": "5", "Cache-Control": "no-store"}
    return Reply(exc.status, headers, body)
