"""`/token`, `/introspect`, `/revoke` and `/userinfo`, plus the conversion between Starlette
requests/responses and the provider's framework-free shapes (also used by `/authorize`)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import parse_qsl, unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from idhub.bootstrap import Services
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.oidc.server import Provider
from idhub.web.batching import Batcher
from idhub.web.middleware import scope_context

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
    if request.method == "POST":
        return await _form_request(request.scope, request.body, issuer)
    headers = _scope_headers(request.scope)
    pairs = form_pairs(request.url.query)
    return _request_data(request.scope, issuer, headers, pairs)


async def receive_body(receive: Receive) -> bytes:
    """The whole request body, as Starlette's `Request.body` reads it: the `http.request`
    messages' bodies up to the one without `more_body`; a disconnect is `ClientDisconnect`."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif kind == "http.disconnect":
            raise ClientDisconnect()


async def _form_request(
    scope: Scope, body: Callable[[], Awaitable[bytes]], issuer: str
) -> OAuthRequestData:
    headers = _scope_headers(scope)
    check_form_type(headers.get("content-type", ""))
    pairs = body_pairs(await body())
    return _request_data(scope, issuer, headers, pairs)


def _scope_headers(scope: Scope) -> dict[str, str]:
    # What `request.headers.items()` yields (names as the server lowercased them, latin-1),
    # later ones winning, read straight from the scope instead of through Starlette's
    # `Headers` object and its decoding on every lookup. A loop, not a comprehension: no
    # function object made and called per request.
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    return headers


def _request_data(
    scope: Scope, issuer: str, headers: dict[str, str], pairs: list[tuple[str, str]]
) -> OAuthRequestData:
    # What `request.url.path` holds (Starlette escapes these three), without building the
    # whole URL from the headers first.
    path = str(scope["path"]).replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
    params, multi = _collect(pairs)
    return OAuthRequestData(
        method=scope["method"],
        uri=issuer.rstrip("/") + path,
        headers=headers,
        params=params,
        multi=multi,
        ctx=scope_context(scope),
    )


def note_client(request: Request, data: OAuthRequestData) -> None:
    """For the access record (web/observe.py): which system asked, never with its secret.

    Noted once the provider has answered, so the Basic header it decoded (once per request,
    `OAuthRequestData.basic_credentials`) is not decoded a second time here."""
    note_scope_client(request.scope, data)


def note_scope_client(scope: Scope, data: OAuthRequestData) -> None:
    """`note_client` on the scope's state."""
    scope.setdefault("state", {})["client_id"] = data.params.get("client_id") or _basic_client_id(
        data
    )


def check_form_type(content_type: str) -> None:
    """BadForm unless the body is declared urlencoded (checked before the body is read)."""
    if content_type.split(";")[0].strip().lower() != FORM_TYPE:
        raise BadForm(f"the request body must be {FORM_TYPE}")


def body_pairs(raw: bytes) -> list[tuple[str, str]]:
    """The pairs of an urlencoded body; BadForm when it is too large or not UTF-8."""
    if len(raw) > MAX_FORM:
        raise BadForm("the request body is too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadForm("the request body is not UTF-8") from None
    return form_pairs(text)


def form_pairs(text: str) -> list[tuple[str, str]]:
    """`parse_qsl(text, keep_blank_values=True)`: the pairs of a urlencoded form or query.

    A form without `%` or `+` (a client-credentials request's) has nothing to decode, so its
    pairs are its `&`-separated fields split at their first `=`, as parse_qsl splits them
    (empty fields left out, a field without `=` a name with an empty value): parse_qsl's
    per-field replace and unquote calls were most of the cost of reading a token request."""
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False)
    # A plain loop: a list comprehension over a generator made two function objects and
    # resumed the generator per field (callgrind: ~9,200 -> ~6,100 instructions per form).
    pairs: list[tuple[str, str]] = []
    for field in text.split("&"):
        if field:
            name, _, value = field.partition("=")
            pairs.append((name, value))
    return pairs


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


class FormEndpoint:
    """A form-post OAuth endpoint (`/token`, `/introspect`, `/revoke`) as a plain ASGI app:
    the body read straight from `receive` and the scope read for the headers and the request
    context, instead of a Starlette `Request` and its `Headers`, `State` and body stream. The
    answer is the one a function endpoint gave (`read_oauth_request`'s refusals, then
    `answer`'s response through `to_response`), and an exception leaves for the request
    layer's handlers as a function endpoint's did (web/routing.py `lean_endpoint`).
    `tests/test_oauth_request_reading.py` holds both to the same bytes.

    `answer` gives what the answer is awaited on; `on_loop`, instead, answers at once on the
    event loop (the inline introspection): no coroutine around a plain call."""

    def __init__(
        self,
        answer: Callable[[OAuthRequestData], Awaitable[OAuthResponseData]] | None = None,
        *,
        issuer: str,
        on_loop: Callable[[OAuthRequestData], OAuthResponseData] | None = None,
    ) -> None:
        if (answer is None) == (on_loop is None):
            raise ValueError("a form endpoint answers with `answer` or with `on_loop`")
        self._answer = answer
        self._on_loop = on_loop
        self._issuer = issuer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # `read_oauth_request`'s steps for a POST, its body read straight from `receive`: the
        # same checks in the same order, without the coroutines between this call and
        # `receive_body` (a frame each per request, four before).
        try:
            headers = _scope_headers(scope)
            check_form_type(headers.get("content-type", ""))
            pairs = body_pairs(await receive_body(receive))
        except BadForm as exc:
            response = _bad_request(str(exc))
        else:
            data = _request_data(scope, self._issuer, headers, pairs)
            try:
                on_loop = self._on_loop
                if on_loop is not None:
                    response = to_response(on_loop(data))
                else:
                    assert self._answer is not None  # one of the two, checked when made
                    response = to_response(await self._answer(data))
            finally:
                note_scope_client(scope, data)
        await response(scope, receive, send)


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

    def form_endpoint(
        self, handle: Callable[[OAuthRequestData], OAuthResponseData], *, inline: bool = False
    ) -> FormEndpoint:
        """The ASGI endpoint answering a form post with `handle` (in the threadpool, or on
        the event loop with `inline`)."""

        if inline:
            return FormEndpoint(issuer=self._issuer, on_loop=handle)

        def answer(data: OAuthRequestData) -> Awaitable[OAuthResponseData]:
            return run_in_threadpool(handle, data)

        return FormEndpoint(answer, issuer=self._issuer)

    def token_answer(self, data: OAuthRequestData) -> Awaitable[OAuthResponseData]:
        """What the answer to `data` is awaited on: the batch's future, or the threadpool
        call (a plain function handing either over, not one more coroutine per request)."""
        batches = self._token_batches
        if batches is None:
            return run_in_threadpool(self._provider.token, data)
        grants = self._batched_grants
        if grants is not None and data.params.get("grant_type") not in grants:
            return run_in_threadpool(self._provider.token, data)
        return batches.submit(data)

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
            Route("/token", FormEndpoint(self.token_answer, issuer=self._issuer), methods=["POST"]),
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
