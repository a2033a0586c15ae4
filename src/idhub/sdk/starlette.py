"""ASGI glue for a Starlette (or any ASGI) system: `BearerAuthMiddleware` requires an idhub
access token for its audience and puts the validated claims in `request.state.idhub_claims`
(errors follow RFC 6750); `backchannel_logout_endpoint` serves a `backchannel_logout_uri`.
The only module of the SDK that imports Starlette."""

from __future__ import annotations

from collections.abc import Collection

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from idhub.sdk.bearer import authenticate, bearer_token, challenge
from idhub.sdk.errors import InvalidToken
from idhub.sdk.logout import BackchannelLogoutReceiver
from idhub.sdk.replies import Reply
from idhub.sdk.tokens import TokenValidator


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
        header = None
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                header = value.decode("latin-1")
                break
        try:
            # Served from memory for a token seen before; a new one may fetch the JWKS or
            # introspect, which blocks, so only then does it leave the event loop.
            claims = self.validator.cached(bearer_token(header))
            if claims is None:
                claims = await run_in_threadpool(authenticate, self.validator, header)
        except InvalidToken as exc:
            await _send(challenge(exc), scope, receive, send)
            return
        scope.setdefault("state", {})["idhub_claims"] = claims
        await self.app(scope, receive, send)


def backchannel_logout_endpoint(receiver: BackchannelLogoutReceiver) -> object:
    """A Starlette endpoint for `Route(path, endpoint, methods=["POST"])`."""

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        reply = await run_in_threadpool(
            receiver.handle_body, body, request.headers.get("content-type")
        )
        return _response(reply)

    return endpoint


def _response(reply: Reply) -> Response:
    return Response(reply.body_bytes(), status_code=reply.status, headers=reply.all_headers())


async def _send(reply: Reply, scope: Scope, receive: Receive, send: Send) -> None:
    await _response(reply)(scope, receive, send)
