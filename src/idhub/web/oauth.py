"""`/token`, `/introspect`, `/revoke` and `/userinfo`, plus the conversion between Starlette
requests/responses and the provider's framework-free shapes (also used by `/authorize`)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.oidc.server import Provider
from idhub.web.batching import Batcher
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
    """The provider's view of a request (see `read_oauth_request`) for `services`' issuer."""
    return await read_oauth_request(request, issuer=services.settings.server.issuer)


async def read_oauth_request(request: Request, *, issuer: str) -> OAuthRequestData:
    """The provider's view of a request: query parameters for GET, the urlencoded form for POST.

    The URI is built from the configured issuer, never from the Host header.
    """
    # What `request.url.path` holds (Starlette escapes these three), without building the
    # whole URL from the headers first.
    path = str(request.scope["path"]).replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    uri = issuer.rstrip("/") + path
    if request.method == "POST":
        pairs = await _form_pairs(request)
    else:
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
    params, multi = _collect(pairs)
    # For the access record (web/observe.py): which system asked, never with its secret.
    request.state.client_id = params.get("client_id") or basic_client_id(request)
    return OAuthRequestData(
        method=request.method,
        uri=uri,
        headers={k: v for k, v in request.headers.items()},
        params=params,
        multi=multi,
        ctx=request_context(request),
    )


async def _form_pairs(request: Request) -> list[tuple[str, str]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise BadForm(f"the request body must be {FORM_TYPE}")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise BadForm("the request body is too large")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadForm("the request body is not UTF-8") from None


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


def basic_client_id(request: Request) -> str | None:
    """The user part of `Authorization: Basic` (client_secret_basic), or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return unquote(decoded.partition(":")[0])[:200] or None


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header (RFC 6750 2.1), or None."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class OAuthEndpoints:
    """`/token`, `/introspect`, `/revoke` (form posts, RFC 6749 / 7662 / 7009) and `/userinfo`.

    `inline`: introspection calls the provider on the event loop instead of handing each
    request to the threadpool. Right for SQLite, where an introspection only reads the local
    file (the throttle counters, the revocation list), and reads never wait in WAL mode: the
    hop would be most of its cost (measured in process: ~160 of ~390 µs of CPU). An inactive
    token's audit event is a write that may wait for the lock; that is the rare case.
    The token endpoint stays off the loop even on SQLite: every answer commits an audit
    event, and on the loop the other worker's hold of the write lock stalls the whole process
    (tried: client credentials fell from ~800/s to ~260/s). Against PostgreSQL every statement
    is a network round trip that may stall (bounded at 1.75 s): all of it stays in the pool.

    `batch_tokens`: token requests go to the threadpool in batches (web/batching.py): what
    queued while the last batch ran goes over in one hop, and the batch's client-credentials
    tokens commit their events in one append (`Provider.token_many`), after one throttle read
    for all of them. Right for SQLite, where every append waits its turn for the one write
    lock anyway: 40 threads each holding one request bought only GIL contention and thread
    hand-overs. And for PostgreSQL, whose appends queue on the chain's advisory lock: a
    thread per request cost ~25 % more server CPU per token (docs/performance.md, 2026-12-02),
    once a batch no longer made its throttle reads one round trip after another.
    `batched_grants`: the grant types that go in batches (None: all). On PostgreSQL only
    client credentials: a batch's code exchanges and refreshes share one unit of work whose
    savepoints are round trips one after another, and measured at a third of their rate
    alone, where each unit already shares its commit with the other threads' (unit_group.py).
    """

    def __init__(
        self,
        *,
        provider: Provider,
        issuer: str,
        inline: bool = False,
        batch_tokens: bool = False,
        batched_grants: frozenset[str] | None = None,
        introspect: Callable[[OAuthRequestData], OAuthResponseData] | None = None,
    ) -> None:
        self._provider = provider
        # The lean introspection path (oidc/introspection_lean.py) when given.
        self._introspect = introspect or provider.introspect
        self._issuer = issuer
        self._inline = inline
        self._token_batches: Batcher[OAuthRequestData, OAuthResponseData] | None = (
            Batcher(provider.token_many, concurrency=2) if batch_tokens else None
        )
        self._batched_grants = batched_grants
        self._token_alone = self.form_endpoint(provider.token)

    def form_endpoint(
        self, handle: Callable[[OAuthRequestData], OAuthResponseData], *, inline: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:

        async def endpoint(request: Request) -> Response:
            try:
                data = await read_oauth_request(request, issuer=self._issuer)
            except BadForm as exc:
                return _bad_request(str(exc))
            if inline:
                return to_response(handle(data))
            return to_response(await run_in_threadpool(handle, data))

        return endpoint

    async def token(self, request: Request) -> Response:
        batches = self._token_batches
        if batches is None:
            return await self._token_alone(request)
        try:
            data = await read_oauth_request(request, issuer=self._issuer)
        except BadForm as exc:
            return _bad_request(str(exc))
        grants = self._batched_grants
        if grants is not None and data.params.get("grant_type") not in grants:
            return to_response(await run_in_threadpool(self._provider.token, data))
        return to_response(await batches.submit(data))

    async def userinfo(self, request: Request) -> Response:
        token = bearer_token(request)
        if token is None and request.method == "POST":
            # RFC 6750 2.2: the token may come as a form field instead.
            try:
                data = await read_oauth_request(request, issuer=self._issuer)
                token = data.params.get("access_token")
            except BadForm:
                token = None
        return to_response(await run_in_threadpool(self._provider.userinfo, token or ""))

    def routes(self) -> list[BaseRoute]:
        provider = self._provider
        return [
            Route("/token", self.token, methods=["POST"]),
            Route(
                "/introspect",
                self.form_endpoint(self._introspect, inline=self._inline),
                methods=["POST"],
            ),
            Route("/revoke", self.form_endpoint(provider.revoke), methods=["POST"]),
            Route("/userinfo", self.userinfo, methods=["GET", "POST"]),
        ]


def routes(services: Services) -> list[BaseRoute]:
    sqlite = services.engine.dialect.name == "sqlite"
    endpoints = OAuthEndpoints(
        provider=services.oidc,
        issuer=services.settings.server.issuer,
        inline=sqlite,
        batch_tokens=True,
        batched_grants=None if sqlite else frozenset({"client_credentials"}),
        introspect=services.introspection.introspect,
    )
    return endpoints.routes()
