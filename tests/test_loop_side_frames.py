"""What an OAuth form request costs on the event loop besides its own work (docs/performance.md,
branch `loop3`): the NUL checks without the `in` operator's hidden TypeError, the form read
without coroutines between the endpoint and `receive_body`, the inline introspection and the
token batch's hand-over without a coroutine of their own, the router's fixed paths without
one, and no regex run for a request id that never came. Each is held to the answers it gave
before by the tests of its module; these hold the shape that makes it cheaper."""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from urllib.parse import parse_qsl

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import Message, Receive, Scope, Send

from idhub.adapters.prometheus_metrics import PrometheusMetrics
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from idhub.web import middleware
from idhub.web.batching import Batcher
from idhub.web.errors import FailureAnswers
from idhub.web.limits import RequestLimits, check_nul_free
from idhub.web.middleware import RequestLayer
from idhub.web.oauth import FormEndpoint, _scope_headers, form_pairs
from idhub.web.observe import RequestObserver
from idhub.web.proxies import TrustedProxies
from idhub.web.routing import IndexedRouter
from idhub.web.security_headers import ResponseHeaders
from tests.test_oauth_request_reading import FORM, ISSUER, _drive, _echo, _reference

CO_COROUTINE = 0x80


class NoContains(bytes):
    """Bytes whose `in` operator fails the test: `check_nul_free` must not use it."""

    def __contains__(self, item: object) -> bool:
        raise AssertionError("tested with the `in` operator")


@pytest.mark.parametrize(
    "data",
    [b"", b"a=b", b"a=%00", b"a=\x00", b"%0", b"%00", b"\x00", b"a=%2500", b"a=%0", b"x" * 5000],
)
def test_the_nul_check_answers_as_the_in_operator_without_it(data: bytes) -> None:
    expected = b"\x00" not in data and b"%00" not in data
    assert check_nul_free(data) is expected
    assert check_nul_free(NoContains(data)) is expected


def _coroutines_below(name: str) -> list[str]:
    """The coroutine frames from the caller's up to (not including) the innermost frame whose
    code is named `name`, innermost first."""
    frame = sys._getframe(1)
    names: list[str] = []
    while frame is not None and frame.f_code.co_name != name:
        if frame.f_code.co_flags & CO_COROUTINE:
            names.append(frame.f_code.co_name)
        frame = frame.f_back  # type: ignore[assignment]
    assert frame is not None, f"no {name} frame on the stack"
    return names


def _scope(path: str = "/token") -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(FORM),
        "client": ("127.0.0.1", 5000),
        "state": {},
    }


def test_the_form_endpoint_reads_its_body_with_no_coroutine_but_receive_body() -> None:
    seen: list[list[str]] = []

    async def receive() -> Message:
        seen.append(_coroutines_below("__call__")[1:])  # [0] is this `receive`
        return {"type": "http.request", "body": b"ok=1", "more_body": False}

    async def send(message: Message) -> None:
        pass

    async def answer(data: OAuthRequestData) -> OAuthResponseData:
        return _echo(data)

    asyncio.run(FormEndpoint(answer, issuer=ISSUER)(_scope(), receive, send))
    assert seen == [["receive_body"]]


def test_an_inline_endpoint_is_called_from_the_form_endpoint_itself() -> None:
    callers: list[list[str]] = []

    def handle(data: OAuthRequestData) -> OAuthResponseData:
        callers.append(_coroutines_below("__call__"))
        return _echo(data)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"ok=1", "more_body": False}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(FormEndpoint(issuer=ISSUER, on_loop=handle)(_scope(), receive, send))
    assert callers == [[]]
    assert sent[0]["status"] == 200


@pytest.mark.parametrize(
    "chunks", [[b"ok=1&scope=a+b&scope=c"], [b"ok=1&client_id=po", b"sted", b""], [b"a=\xff"]]
)
def test_an_inline_endpoint_answers_as_the_request_path_byte_for_byte(
    chunks: list[bytes],
) -> None:
    inline = FormEndpoint(issuer=ISSUER, on_loop=_echo)
    assert _drive(inline, chunks, FORM) == _drive(request_response(_reference), chunks, FORM)


def test_a_form_endpoint_takes_exactly_one_way_to_answer() -> None:
    async def answer(data: OAuthRequestData) -> OAuthResponseData:
        return _echo(data)

    with pytest.raises(ValueError):
        FormEndpoint(issuer=ISSUER)
    with pytest.raises(ValueError):
        FormEndpoint(answer, issuer=ISSUER, on_loop=_echo)


def test_a_batchers_submit_hands_back_the_payloads_future_on_every_loop() -> None:
    batcher: Batcher[int, int] = Batcher(lambda batch: [n * 2 for n in batch])

    async def ask(n: int) -> tuple[bool, int]:
        waiting = batcher.submit(n)
        return asyncio.isfuture(waiting), await waiting

    # A loop after another (each its own lane): the second must not get the first's.
    assert asyncio.run(ask(2)) == (True, 4)
    assert asyncio.run(ask(5)) == (True, 10)

    async def many() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(n) for n in range(20))))

    assert asyncio.run(many()) == [n * 2 for n in range(20)]


def test_a_fixed_path_reaches_its_endpoint_with_no_coroutine_of_the_router() -> None:
    stacks: list[list[str]] = []

    async def endpoint(request: Request) -> Response:
        stacks.append(_coroutines_below("outer"))
        return Response("ok")

    async def with_param(request: Request) -> Response:
        stacks.append(_coroutines_below("outer"))
        return Response(request.path_params["name"])

    router = IndexedRouter([Route("/fixed", endpoint), Route("/p/{name}", with_param)])
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def outer(path: str) -> None:
        scope = {**_scope(path), "method": "GET", "headers": []}
        await router.app(scope, receive, send)

    asyncio.run(outer("/fixed"))
    asyncio.run(outer("/p/x"))
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"] == [b"ok", b"x"]
    # The fixed path: the endpoint and the lean wrapper's `app`, nothing of the router's.
    assert stacks[0] == ["endpoint", "app"]
    assert len(stacks[1]) > len(stacks[0])  # the scan: Starlette's route handling between


def test_no_request_id_pattern_is_run_for_a_request_without_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    pattern = middleware._REQUEST_ID

    class Watched:
        def match(self, text: str) -> object:
            asked.append(text)
            return pattern.match(text)

    monkeypatch.setattr(middleware, "_REQUEST_ID", Watched())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(scope["state"]["request_id"])(scope, receive, send)

    limits = RequestLimits(
        max_api_body=100, max_form_body=100, max_request_line=200, max_headers=20,
        max_header_bytes=2000,
    )  # fmt: skip
    layer = RequestLayer(
        app,
        proxies=TrustedProxies(()),
        limits=limits,
        headers=ResponseHeaders(issuer=ISSUER),
        observer=RequestObserver(metrics=PrometheusMetrics(), templates={}),
        failures=FailureAnswers(debug=False),
    )

    def ids(headers: list[tuple[bytes, bytes]]) -> bytes:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        asyncio.run(layer({**_scope("/x"), "method": "GET", "headers": headers}, receive, send))
        return bytes(sent[1]["body"])

    fresh = ids([])
    assert asked == [] and len(fresh) == 16
    assert ids([(b"x-request-id", b"abcdefgh-1")]) == b"abcdefgh-1"
    assert ids([(b"x-request-id", b"bad id!")]) != b"bad id!"
    assert asked == ["abcdefgh-1", "bad id!"]


def _python_frames_entered(call: Any, *args: Any) -> list[str]:
    """The names of the Python frames `call(*args)` enters below its own."""
    entered: list[str] = []

    def watch(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            entered.append(frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        call(*args)
    finally:
        sys.setprofile(None)
    return entered[1:]  # [0] is `call` itself


def test_a_plain_form_is_split_without_a_comprehension() -> None:
    text = "grant_type=client_credentials&&scope=authz&x"
    assert form_pairs(text) == parse_qsl(text, keep_blank_values=True)
    assert _python_frames_entered(form_pairs, text) == []


def test_the_headers_are_read_from_the_scope_without_a_comprehension() -> None:
    scope = {"headers": [(b"a", b"1"), (b"b", b"\xe9"), (b"a", b"2")]}
    assert _scope_headers(scope) == {"a": "2", "b": "é"}
    assert _python_frames_entered(_scope_headers, scope) == []


def test_a_response_heads_known_names_are_not_checked_again() -> None:
    from types import SimpleNamespace

    from idhub.web.http_protocol import _Exchange

    protocol = SimpleNamespace(
        transport=None, server_state=SimpleNamespace(default_headers=[(b"date", b"x")])
    )
    lines = [(b"content-type", b"application/json"), (b"Content-Length", b"2")]

    def head() -> bytes:
        cycle = _Exchange(
            protocol,  # type: ignore[arg-type]
            {"method": "GET"},
            keep_alive=True,
            expect_100_continue=False,
        )
        return cycle._build_head(200, lines)

    first = head()  # learns the names
    assert first.endswith(b"date: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n")
    assert _python_frames_entered(head) == ["__init__", "_build_head"]
    assert head() == first
    with pytest.raises(RuntimeError, match="header name"):
        _Exchange(
            protocol,  # type: ignore[arg-type]
            {"method": "GET"},
            keep_alive=True,
            expect_100_continue=False,
        )._build_head(200, [(b"bad name", b"1")])
