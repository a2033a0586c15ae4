"""The answer's head decided once per header shape (web/security_headers.py
`ResponseHeaders.head`): for every route, status and shape the head the request layer sends is
the same list, byte for byte and in the same order, as the line-by-line `rebuilt` makes from
the same lines, the security headers are never missing, and the table keeps names only."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterable, Iterator

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.web.app import create_app
from idhub.web.middleware import RequestLayer
from idhub.web.security_headers import _MAX_SHAPES, ResponseHeaders

Lines = list[tuple[bytes, bytes]]
ID = (b"x-request-id", b"0123456789abcdef")


def wire(lines: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The head as uvicorn writes it (name, value, in order), to compare byte for byte."""
    return b"".join(name + b": " + value + b"\r\n" for name, value in lines)


def check_secured(lines: Lines, *, static: bool) -> None:
    """Ours once each, no `server`, and a caching policy on all but static files."""
    names = [name.lower() for name, _ in lines]
    assert (b"x-content-type-options", b"nosniff") in lines
    assert names.count(b"x-content-type-options") == 1
    assert names.count(b"strict-transport-security") == 1
    assert names.count(b"x-request-id") == 1
    assert b"server" not in names
    assert static or b"cache-control" in names


SHAPES: list[tuple[str, Lines, bool]] = [
    ("empty", [], False),
    ("json", [(b"content-length", b"17"), (b"content-type", b"application/json")], False),
    (
        "token answer",
        [
            (b"cache-control", b"no-store"),
            (b"pragma", b"no-cache"),
            (b"content-length", b"812"),
            (b"content-type", b"application/json"),
        ],
        False,
    ),
    (
        "own cache-control and content-type",
        [
            (b"cache-control", b"public, max-age=300"),
            (b"content-type", b"application/jwk-set+json"),
            (b"content-length", b"5"),
        ],
        False,
    ),
    (
        "mixed-case cache-control",
        [(b"Cache-Control", b"private"), (b"content-length", b"2")],
        False,
    ),
    (
        "drops server and ours",
        [
            (b"server", b"uvicorn"),
            (b"content-length", b"2"),
            (b"x-content-type-options", b"sniff-away"),
            (b"strict-transport-security", b"max-age=0"),
        ],
        False,
    ),
    ("upper-case Server", [(b"Server", b"x"), (b"content-type", b"text/plain")], False),
    (
        "static file",
        [(b"content-length", b"9"), (b"etag", b'"abc"'), (b"last-modified", b"x")],
        True,
    ),
    ("static file with no-cache", [(b"cache-control", b"no-cache")], True),
    ("repeated lines", [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"vary", b"x")], False),
]


@pytest.mark.parametrize("issuer", ["https://sso.example.test", "http://127.0.0.1:18600"])
@pytest.mark.parametrize(("name", "given", "static"), SHAPES, ids=[s[0] for s in SHAPES])
def test_each_shape_is_the_head_rebuilt_line_by_line(
    issuer: str, name: str, given: Lines, static: bool
) -> None:
    headers = ResponseHeaders(issuer=issuer)
    expected = headers.rebuilt(list(given), static=static, extra=ID)
    for _ in range(3):  # learnt, then from the table
        head = headers.head(list(given), static, ID)
        assert head == expected and wire(head) == wire(expected)
        if issuer.startswith("https://"):
            check_secured(head, static=static)
    # The same shape with other values (a length, a cookie): the values as given.
    other = [(key, value + b"9") for key, value in given]
    assert headers.head(other, static, ID) == headers.rebuilt(other, static=static, extra=ID)
    # As ASGI allows: any iterable of lines, also a tuple or a generator.
    assert headers.head(tuple(given), static, ID) == expected
    assert headers.head(iter(given), static, ID) == expected


def test_a_known_shape_is_not_rebuilt_and_the_given_list_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = ResponseHeaders(issuer="https://sso.example.test")
    given = [(b"content-length", b"17"), (b"content-type", b"application/json")]
    first = headers.head(given, False, ID)

    def rebuilt(*args: object, **kwargs: object) -> Lines:
        raise AssertionError("a known shape that drops nothing is not rebuilt")

    monkeypatch.setattr(headers, "rebuilt", rebuilt)
    again = [(b"content-length", b"4242"), (b"content-type", b"application/json")]
    head = headers.head(again, False, ID)
    assert head == [*again, ID, *first[3:]]
    assert head is not again and again == [
        (b"content-length", b"4242"),
        (b"content-type", b"application/json"),
    ]


def test_the_table_is_bounded_and_keeps_names_only() -> None:
    headers = ResponseHeaders(issuer="https://sso.example.test")
    secret = b"code=SplxlOBeZQQYbYS6WxSbIA"
    for n in range(_MAX_SHAPES * 2 + 7):
        given = [(f"x-h{n}".encode(), secret), (b"location", b"https://rp.test/cb?" + secret)]
        assert headers.head(given, n % 2 == 0, ID) == headers.rebuilt(
            given, static=n % 2 == 0, extra=ID
        )
    for tails in headers._tails:
        assert 0 < len(tails) <= _MAX_SHAPES
        for shape, tail in tails.items():
            assert all(secret not in name for name in shape)
            assert tail is not None and all(secret not in value for _, value in tail)


# ------------------------------------------------------------------ the whole app


@pytest.fixture
def app_services(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Iterator[Services]:
    services = make_services(make_settings(db_url, issuer="https://sso.example.test"))
    services.migrate()
    services.keys.ensure_active(lambda _line: None)
    yield services


Seen = list[tuple[int, Lines, Lines, bool]]


def _recorded(app_services: Services) -> tuple[Callable[..., object], Seen, ResponseHeaders]:
    """The app's request layer, every head it sends recorded with the head `rebuilt` makes
    from the same lines: (status, sent, rebuilt, static)."""
    app = create_app(app_services)
    stack = app.build_middleware_stack()
    assert isinstance(stack, RequestLayer)
    headers: ResponseHeaders = stack._headers
    real = headers.head
    seen: Seen = []

    def head(
        given: Iterable[tuple[bytes, bytes]], static: bool, extra: tuple[bytes, bytes]
    ) -> Lines:
        given = list(given)
        reference = headers.rebuilt(list(given), static=static, extra=extra)
        sent = real(given, static, extra)
        seen.append((0, sent, reference, static))
        return sent

    headers.head = head  # type: ignore[method-assign]

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start" and seen:
                _, sent, reference, static = seen[-1]
                assert message["headers"] is sent
                seen[-1] = (message["status"], sent, reference, static)
            await send(message)

        scope["app"] = app
        await stack(scope, receive, noting)

    return outer, seen, headers


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_every_route_sends_the_head_rebuilt_line_by_line(app_services: Services) -> None:
    _, secret = app_services.clients.register(
        "heads-rp", grant_types=["client_credentials"], scope="authz"
    )
    assert secret
    layer, seen, headers = _recorded(app_services)
    good, bad = _basic("heads-rp", secret), _basic("heads-rp", "wrong")
    form = {"content-type": "application/x-www-form-urlencoded"}
    cc = "grant_type=client_credentials&scope=authz"

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=layer)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://sso") as client:
            statuses = []
            for _ in range(2):  # the second round from the learnt shapes
                token = await client.post(
                    "/token", content=cc, headers={**form, "authorization": good}
                )
                access = token.json()["access_token"]
                statuses.append(token.status_code)
                for method, path, body, head in [
                    ("GET", "/healthz", "", {}),
                    ("POST", "/token", cc, {**form, "authorization": bad}),
                    ("POST", "/introspect", f"token={access}", {**form, "authorization": good}),
                    ("POST", "/introspect", "token=nope", {**form, "authorization": good}),
                    ("POST", "/api/v1/authz/check", "{}", {"content-type": "application/json"}),
                    (
                        "POST",
                        "/api/v1/authz/check",
                        '{"user": "nobody", "type": "t", "action": "read"}',
                        {"content-type": "application/json", "authorization": f"Bearer {access}"},
                    ),
                    ("GET", "/.well-known/openid-configuration", "", {}),
                    ("GET", "/jwks", "", {}),
                    ("GET", "/static/idhub.css", "", {}),
                    ("GET", "/login", "", {}),
                    ("GET", "/nope", "", {}),
                    ("PUT", "/healthz", "", {}),
                ]:
                    answer = await client.request(method, path, content=body, headers=head)
                    statuses.append(answer.status_code)
            return statuses

    statuses = asyncio.run(run())
    assert len(seen) == len(statuses)
    assert {200, 401, 404, 405} <= set(statuses)
    for status, sent, reference, static in seen:
        assert sent == reference and wire(sent) == wire(reference), status
        names = [name for name, _ in sent]
        check_secured(sent, static=static)
        if static:
            assert b"cache-control" not in names
    # The hot JSON answers' shapes (/healthz and the decisions; /token and /introspect) were
    # learnt as dropping nothing; a page that sets one of ours itself takes `rebuilt`.
    tails = headers._tails[False]
    assert tails[(b"content-length", b"content-type")]
    assert tails[(b"cache-control", b"pragma", b"content-length", b"content-type")]
    assert any(tail is None for tail in tails.values())
