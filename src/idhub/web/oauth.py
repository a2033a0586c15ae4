"""`/token`, `/introspect`, `/revoke` and `/userinfo`, plus the conversion between Starlette
requests/responses and the provider's framework-free shapes (also used by `/authorize`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.web.middleware import request_context

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM = 64 * 1024


def _collect(pairs: list[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    params: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        params.setdefault(key, value)
        multi.setdefault(key, []).append(value)
    return params, multi


class BadForm(Exception):
    pass


async def oauth_request(request: Request, services: Services) -> OAuthRequestData:
    """The provider's view of a request: query parameters for GET, the urlencoded form for POST.

    The URI is built from the configured issuer, never from the Host header.
    """
    uri = services.settings.server.issuer.rstrip("/") + request.url.path
    if request.method == "POST":
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != FORM_TYPE:
            raise BadForm(f"the request body must be {FORM_TYPE}")
        body = await request.body()
        if len(body) > MAX_FORM:
            raise BadForm("the request body is too large")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadForm("the request body is not UTF-8") from None
    else:
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
    params, multi = _collect(pairs)
    return OAuthRequestData(
        method=request.method,
        uri=uri,
        headers={k: v for k, v in request.headers.items()},
        params=params,
        multi=multi,
        ctx=request_context(request),
    )


def to_response(data: OAuthResponseData) -> Response:
    headers = dict(data.headers)
    if isinstance(data.body, dict):
        headers.pop("Content-Type", None)
        return Response(
            data.json_bytes(),
            status_code=data.status,
            headers=headers,
            media_type="application/json",
        )
    return Response(data.body, status_code=data.status, headers=headers)


def _bad_request(description: str) -> Response:
    return JSONResponse(
        {"error": "invalid_request", "error_description": description},
        status_code=400,
        headers={"Cache-Control": "no-store"},
    )


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header (RFC 6750 2.1), or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def routes(services: Services) -> list[BaseRoute]:
    provider = services.oidc

    def form_endpoint(
        handle: Callable[[OAuthRequestData], OAuthResponseData],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A form-posting endpoint (RFC 6749 token, RFC 7662, RFC 7009) run in the threadpool."""

        async def endpoint(request: Request) -> Response:
            try:
                data = await oauth_request(request, services)
            except BadForm as exc:
                return _bad_request(str(exc))
            return to_response(await run_in_threadpool(handle, data))

        return endpoint

    async def userinfo(request: Request) -> Response:
        token = bearer_token(request)
        if token is None and request.method == "POST":
            # RFC 6750 2.2: the token may come as a form field instead.
            try:
                data = await oauth_request(request, services)
                token = data.params.get("access_token")
            except BadForm:
                token = None
        response = await run_in_threadpool(provider.userinfo, token or "")
        return to_response(response)

    return [
        Route("/token", form_endpoint(provider.token), methods=["POST"]),
        Route("/introspect", form_endpoint(provider.introspect), methods=["POST"]),
        Route("/revoke", form_endpoint(provider.revoke), methods=["POST"]),
        Route("/userinfo", userinfo, methods=["GET", "POST"]),
    ]
