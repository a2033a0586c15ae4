"""How the web layer reads a token-side request (web/oauth.py `read_oauth_request`) and which
client it notes for the access record: the same view as Starlette's own `Request` gives, and
the `Authorization: Basic` header decoded once per request however many steps ask."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import pytest
from authlib.consts import default_json_headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, request_response

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.oidc import messages
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.web.middleware import scope_context
from idhub.web.oauth import BadForm, FormEndpoint, note_client, read_oauth_request, to_response
from tests.oidc_support import basic_header, prepare, raw_form_request

ISSUER = "http://127.0.0.1:8000"


def _request(body: bytes, headers: list[tuple[bytes, bytes]], path: str = "/token") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("192.0.2.7", 5555),
        "server": ("127.0.0.1", 8000),
        "scheme": "http",
        "root_path": "",
        "state": {},
    }
    return Request(scope, receive)


FORM = [(b"content-type", b"application/x-www-form-urlencoded; charset=utf-8")]


def _read(body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[Request, OAuthRequestData]:
    request = _request(body, headers)
    return request, asyncio.run(read_oauth_request(request, issuer=ISSUER))


def test_the_request_is_read_as_starlette_reads_it() -> None:
    headers = [
        *FORM,
        (b"authorization", b"Basic Zm9vOmJhcg=="),
        (b"x-dup", b"first"),
        (b"x-dup", b"second"),
        (b"user-agent", "caf\xe9".encode("latin-1")),
    ]
    _, data = _read(b"grant_type=client_credentials&scope=a+b&scope=c&empty=&bare", headers)
    assert data.headers == {k: v for k, v in _request(b"", headers).headers.items()}
    assert data.headers["x-dup"] == "second" and data.headers["user-agent"] == "café"
    assert data.params == {
        "grant_type": "client_credentials",
        "scope": "a b",
        "empty": "",
        "bare": "",
    }
    assert data.multi["scope"] == ["a b", "c"]
    assert data.uri == ISSUER + "/token" and data.method == "POST"
    assert data.ctx is not None and data.ctx.client_ip == "192.0.2.7"
    assert data.ctx.user_agent == "café"


@pytest.mark.parametrize(
    ("body", "headers", "why"),
    [
        (b"a=b", [(b"content-type", b"application/json")], "must be"),
        (b"a=b", [], "must be"),
        (b"a=" + b"x" * 70_000, FORM, "too large"),
        (b"a=\xff", FORM, "not UTF-8"),
    ],
)
def test_a_bad_form_is_refused(body: bytes, headers: list[tuple[bytes, bytes]], why: str) -> None:
    with pytest.raises(BadForm, match=why):
        _read(body, headers)


@pytest.mark.parametrize(
    ("header", "form", "noted"),
    [
        (basic_header("svc", "s3cret"), b"grant_type=x", "svc"),
        (basic_header("a b:c", "s"), b"", "a b:c"),  # form-encoded inside (RFC 6749 2.3.1)
        ("basic " + base64.b64encode(b"lower:s").decode(), b"", "lower"),
        # No colon: unusable for authentication, yet the record names what was sent.
        ("Basic " + base64.b64encode(b"nocolon").decode(), b"", "nocolon"),
        ("Basic !!!", b"", None),
        ("Bearer abc.def.ghi", b"", None),
        (None, b"client_id=posted", "posted"),
        (basic_header("svc", "s"), b"client_id=named", "named"),
        (basic_header("x" * 300, "s"), b"", "x" * 200),
    ],
)
def test_the_access_record_names_the_client(header: str | None, form: bytes, noted: str) -> None:
    headers = list(FORM)
    if header is not None:
        headers.append((b"authorization", header.encode("latin-1")))
    request, data = _read(form, headers)
    note_client(request, data)
    assert request.state.client_id == noted


@pytest.fixture
def hub(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Services:
    services = make_services(make_settings(db_url))
    prepare(services)
    return services


def test_a_request_decodes_its_basic_header_once(
    hub: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean path's recognition, the throttle's claimed client id and the access record
    all read the one decode kept on the request (`OAuthRequestData.basic_credentials`)."""
    _, secret = hub.clients.register("svc", grant_types=["client_credentials"], scope="authz")
    assert secret
    real = messages.basic_credentials
    decoded: list[str] = []

    def counted(header: str) -> tuple[str, str] | None:
        decoded.append(header)
        return real(header)

    monkeypatch.setattr(messages, "basic_credentials", counted)
    auth = {"authorization": basic_header("svc", secret)}
    token = raw_form_request(
        "/token", [("grant_type", "client_credentials")], "10.0.0.1", headers=auth
    )
    answer = hub.oidc.token_many([token])[0]
    assert answer.status == 200 and isinstance(answer.body, dict)
    request = _request(b"", [])
    note_client(request, token)
    assert request.state.client_id == "svc" and len(decoded) == 1
    asked = raw_form_request(
        "/introspect", [("token", answer.body["access_token"])], "10.0.0.1", headers=auth
    )
    reply = hub.introspection.introspect(asked)
    assert isinstance(reply.body, dict) and reply.body["active"] is True
    note_client(request, asked)
    assert len(decoded) == 2


@pytest.mark.parametrize(
    "answer",
    [
        OAuthResponseData(200, list(default_json_headers), {"access_token": "a.b.c", "n": 1}),
        OAuthResponseData(200, list(default_json_headers), {"active": False}),
        OAuthResponseData(
            401,
            [*default_json_headers, ("WWW-Authenticate", "Basic")],
            {"error": "invalid_client", "error_description": "客户端"},
        ),
        OAuthResponseData(503, [*default_json_headers, ("Retry-After", "1")], {"error": "x"}),
        OAuthResponseData(400, [("content-type", "application/json")], {"error": "y"}),
        OAuthResponseData(302, [("Location", "http://127.0.0.1:9/cb?code=c")]),
    ],
)
def test_an_answer_is_sent_as_starlette_builds_it(answer: OAuthResponseData) -> None:
    """The head of a JSON answer built once per header shape is the head Starlette builds."""
    headers = dict(answer.headers)
    if isinstance(answer.body, dict):
        headers.pop("Content-Type", None)
        expected = Response(
            answer.json_bytes(),
            status_code=answer.status,
            headers=headers,
            media_type="application/json",
        )
    else:
        expected = Response(answer.body, status_code=answer.status, headers=headers)
    for _ in range(2):  # built, then from the kept head
        sent = to_response(answer)
        assert (sent.status_code, sent.raw_headers, sent.body) == (
            expected.status_code,
            expected.raw_headers,
            expected.body,
        )


def _reference_context(request: Request) -> tuple[str | None, str | None, str | None]:
    """What `request_context` read through Starlette's objects before `scope_context`."""
    client = getattr(request.state, "client_ip", None)
    if client is None and request.client:
        client = request.client.host
    agent = request.headers.get("user-agent")
    return client, agent[:500] if agent else None, getattr(request.state, "request_id", None)


@pytest.mark.parametrize(
    ("headers", "state", "peer"),
    [
        ([(b"user-agent", b"one"), (b"user-agent", b"two")], {"request_id": "r-1"}, True),
        ([(b"user-agent", "caf\xe9".encode("latin-1") * 300)], {"client_ip": "10.0.0.9"}, True),
        ([(b"user-agent", b"")], {}, False),
        ([], {"client_ip": "10.0.0.9", "request_id": "r-2"}, False),
    ],
)
def test_the_scope_context_is_what_starlettes_request_gives(
    headers: list[tuple[bytes, bytes]], state: dict[str, str], peer: bool
) -> None:
    request = _request(b"", headers)
    request.scope["state"] = dict(state)
    if not peer:
        del request.scope["client"]
    ctx = scope_context(request.scope)
    assert (ctx.client_ip, ctx.user_agent, ctx.request_id) == _reference_context(request)


async def _reference_endpoint(
    request: Request, answer: Callable[[OAuthRequestData], OAuthResponseData]
) -> Response:
    """A form endpoint as a Starlette function endpoint: the Request path."""
    try:
        data = await read_oauth_request(request, issuer=ISSUER)
    except BadForm as exc:
        return JSONResponse(
            {"error": "invalid_request", "error_description": str(exc)},
            status_code=400,
            headers={"Cache-Control": "no-store"},
        )
    try:
        return to_response(answer(data))
    finally:
        note_client(request, data)


async def _reference(request: Request) -> Response:
    return await _reference_endpoint(request, _echo)


def _drive(
    app: Callable[..., Any],
    chunks: list[bytes],
    headers: list[tuple[bytes, bytes]],
    *,
    complete: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One request through `app` (an ASGI app of scope, receive, send), its body in `chunks`:
    the messages it sent and the scope's state after."""
    request = _request(b"", headers)
    scope = request.scope
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not complete}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, scope["state"]


def _echo(data: OAuthRequestData) -> OAuthResponseData:
    """An answer that shows everything the endpoint read."""
    assert data.ctx is not None
    return OAuthResponseData(
        200 if data.params.get("ok") else 401,
        list(default_json_headers),
        {
            "method": data.method,
            "uri": data.uri,
            "headers": data.headers,
            "multi": data.multi,
            "ctx": [data.ctx.client_ip, data.ctx.user_agent, data.ctx.request_id],
        },
    )


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        ([b"ok=1&grant_type=client_credentials&scope=a+b&scope=c"], FORM),
        ([b"ok=1&client_id=po", b"sted&x=", b""], [*FORM, (b"user-agent", b"ua")]),
        ([b"grant_type=x"], [*FORM, (b"authorization", basic_header("svc", "s").encode())]),
        ([b"a=b"], [(b"content-type", b"application/json")]),
        ([b"a=" + b"x" * 70_000], FORM),
        ([b"a=\xff"], FORM),
        ([b""], FORM),
    ],
)
def test_the_asgi_form_endpoint_answers_as_the_request_path_byte_for_byte(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]]
) -> None:
    async def answer(data: OAuthRequestData) -> OAuthResponseData:
        return _echo(data)

    asgi = FormEndpoint(answer, issuer=ISSUER)
    assert _drive(asgi, chunks, headers) == _drive(request_response(_reference), chunks, headers)


def test_a_client_gone_before_its_body_is_complete_leaves_as_from_starlette() -> None:
    async def answer(data: OAuthRequestData) -> OAuthResponseData:
        raise AssertionError("never asked")

    with pytest.raises(ClientDisconnect):
        _drive(FormEndpoint(answer, issuer=ISSUER), [b"a=b", b"c"], FORM, complete=False)
    with pytest.raises(ClientDisconnect):
        _drive(request_response(_reference), [b"a=b", b"c"], FORM, complete=False)


def test_the_oauth_form_routes_are_asgi_form_endpoints(hub: Services) -> None:
    from idhub.web.oauth import routes

    served = {r.path: r for r in routes(hub) if isinstance(r, Route)}
    for path in ("/token", "/introspect", "/revoke"):
        assert isinstance(served[path].endpoint, FormEndpoint)
        assert served[path].app is served[path].endpoint
