"""`/token`, `/introspect`, `/revoke` and `/userinfo`, plus the conversion between Starlette
requests/responses and the provider's framework-free shapes (also used by `/authorize`)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
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
    # What `request.headers.items()` yields (names as the server lowercased them, latin-1),
    # later ones winning, read straight from the scope instead of through Starlette's
    # `Headers` object and its decoding on every lookup.
    headers = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in request.scope["headers"]
    }
    if request.method == "POST":
        pairs = await _form_pairs(request, headers.get("content-type", ""))
    else:
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
    params, multi = _collect(pairs)
    return OAuthRequestData(
        method=request.method,
        uri=uri,
        headers=headers,
        params=params,
        multi=multi,
        ctx=request_context(request),
    )


def note_client(request: Request, data: OAuthRequestData) -> None:
    """For the access record (web/observe.py): which system asked, never with its secret.

    Noted once the provider has answered, so the Basic header it decoded (once per request,
    `OAuthRequestData.basic_credentials`) is not decoded a second time here."""
    request.state.client_id = data.params.get("client_id") or _basic_client_id(data)


async def _form_pairs(request: Request, content_type: str) -> list[tuple[str, str]]:
    if content_type.split(";")[0].strip().lower() != FORM_TYPE:
        raise BadForm(f"the request body must be {FORM_TYPE}")
    body = await request.body()
    if len(body) > MAX_FORM:
        raise BadForm("the request body is too large")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadForm("the request body is not UTF-8") from None


def to_response(data: OAuthResponseData) -> Response:
    if isinstance(data.body, dict):
        # No content-length on these statuses (Starlette's rule): never a JSON answer's.
        head = None if data.status < 200 or data.status in (204, 304) else _json_head(data.headers)
        if head is not None:
            return _JsonAnswer(data.json_bytes(), data.status, head)
        return _json_response(data.json_bytes(), data.status, data.headers)
    return Response(data.body, status_code=data.status, headers=dict(data.headers))


def _json_response(body: bytes, status: int, headers: Sequence[tuple[str, str]]) -> Response:
    named = dict(headers)
    named.pop("Content-Type", None)
    return Response(body, status_code=status, headers=named, media_type="application/json")


# The head of a JSON answer depends only on the provider's list of headers, and there are a
# handful of those (the JSON defaults; with WWW-Authenticate; with Retry-After): each is built
# once by Starlette's own `Response` and then only its content-length changes. Building it
# per answer was about a fifth of the web layer's cost of one token answer (callgrind).
# Only JSON answers: their headers are fixed by the server, never a redirect's Location.
_JSON_HEADS: dict[tuple[tuple[str, str], ...], tuple[tuple[tuple[bytes, bytes], ...], int]] = {}
_MAX_HEADS = 64


def _json_head(
    headers: Sequence[tuple[str, str]],
) -> tuple[tuple[tuple[bytes, bytes], ...], int] | None:
    """The raw head `_json_response` builds for `headers` (with a placeholder length) and
    where its content-length is; None when that is not of the usual form."""
    key = tuple(headers)
    head = _JSON_HEADS.get(key)
    if head is not None:
        return head
    if any(name.lower() == "content-length" for name, _ in headers):
        return None
    raw = _json_response(b"", 200, headers).raw_headers
    at = [i for i, (name, _) in enumerate(raw) if name == b"content-length"]
    if len(at) != 1:
        return None
    head = (tuple(raw), at[0])
    if len(_JSON_HEADS) < _MAX_HEADS:
        _JSON_HEADS[key] = head
    return head


class _JsonAnswer(Response):
    """What `_json_response` answers, its head copied from `_json_head` (the same bytes)."""

    media_type = "application/json"

    def __init__(
        self, body: bytes, status: int, head: tuple[tuple[tuple[bytes, bytes], ...], int]
    ) -> None:
        raw, at = head
        self.status_code = status
        self.background = None
        self.body = body
        headers = list(raw)
        headers[at] = (b"content-length", str(len(body)).encode("latin-1"))
        self.raw_headers = headers


def _bad_request(description: str) -> Response:
    return JSONResponse(
        {"error": "invalid_request", "error_description": description},
        status_code=400,
        headers={"Cache-Control": "no-store"},
    )


def _basic_client_id(data: OAuthRequestData) -> str | None:
    """The user part of `Authorization: Basic` (client_secret_basic), or None."""
    header = data.headers.get("authorization", "")
    if header.partition(" ")[0].lower() != "basic":
        return None
    credentials = data.basic_credentials
    if credentials is not None:
        return credentials[0][:200]
    # Unusable for authentication (no colon, a NUL), yet worth naming in the record.
    try:
        decoded = base64.b64decode(header.partition(" ")[2].strip(), validate=True).decode("utf-8")
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
    per client and address (core/client_guard.py `ThrottleBatch`). Right for SQLite, where
    every append waits its turn for the one write lock anyway: 40 threads each holding one
    request bought only GIL contention and thread hand-overs. And for PostgreSQL, whose appends
    queue on the chain's advisory lock: a thread per request cost ~25-30 % more server CPU per
    token (docs/performance.md, 2026-12-02 PostgreSQL client credentials), once a batch no
    longer made its throttle reads one round trip after another.
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
            try:
                if inline:
                    return to_response(handle(data))
                return to_response(await run_in_threadpool(handle, data))
            finally:
                note_client(request, data)

        return endpoint

    async def token(self, request: Request) -> Response:
        batches = self._token_batches
        if batches is None:
            return await self._token_alone(request)
        try:
            data = await read_oauth_request(request, issuer=self._issuer)
        except BadForm as exc:
            return _bad_request(str(exc))
        try:
            grants = self._batched_grants
            if grants is not None and data.params.get("grant_type") not in grants:
                return to_response(await run_in_threadpool(self._provider.token, data))
            return to_response(await batches.submit(data))
        finally:
            note_client(request, data)

    async def userinfo(self, request: Request) -> Response:
        token = bearer_token(request)
        if token is None and request.method == "POST":
            # RFC 6750 2.2: the token may come as a form field instead.
            try:
                data = await read_oauth_request(request, issuer=self._issuer)
                note_client(request, data)
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
