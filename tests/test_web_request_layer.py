"""The one request layer (web/middleware.py `RequestLayer`): what the six middlewares it
replaced did, done by one layer around the router - and every answer, including the last-resort
500, leaving with the request id and the security headers and counted under its status."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from idhub.adapters.prometheus_metrics import PrometheusMetrics
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.web.app import IdhubApp, create_app
from idhub.web.errors import FailureAnswers
from idhub.web.limits import RequestLimits
from idhub.web.middleware import RequestLayer
from idhub.web.observe import RequestObserver
from idhub.web.proxies import TrustedProxies
from idhub.web.security_headers import ResponseHeaders
from tests.conftest import serve_asgi

LIMITS = RequestLimits(
    max_api_body=1000,
    max_form_body=100,
    max_request_line=200,
    max_headers=20,
    max_header_bytes=2000,
)


def layer(
    app: Callable[[Scope, Receive, Send], object],
    metrics: PrometheusMetrics,
    *,
    debug: bool = False,
) -> RequestLayer:
    return RequestLayer(
        app,  # type: ignore[arg-type]
        proxies=TrustedProxies(()),
        limits=LIMITS,
        headers=ResponseHeaders(issuer="https://sso.example.test"),
        observer=RequestObserver(metrics=metrics, templates={}),
        failures=FailureAnswers(debug=debug),
    )


def http_scope(path: str = "/x", headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 1),
    }


def drive(asgi: RequestLayer, scope: Scope, body: bytes = b"") -> list[Message]:
    """One request through `asgi` as a server would drive it; the messages it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(asgi(scope, receive, send))
    return sent


def counted(metrics: PrometheusMetrics, status: int) -> bool:
    text = metrics.exposition()[0].decode()
    return f'status="{status}"' in text and "idhub_http_requests_total{" in text


def check_headed(start: Message, request_id: str | None = None) -> None:
    """The header lines of `start`: the security headers and the request id, each once."""
    names = [name for name, _ in start["headers"]]
    assert names.count(b"x-content-type-options") == 1
    assert names.count(b"strict-transport-security") == 1
    assert names.count(b"x-request-id") == 1
    assert b"server" not in names
    if request_id is not None:
        assert dict(start["headers"])[b"x-request-id"] == request_id.encode()


@pytest.fixture
def app_services(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> Services:
    services = make_services(make_settings(sqlite_db_url, issuer="https://sso.example.test"))
    services.migrate()
    return services


def test_the_app_has_one_layer_between_starlette_and_the_router(app_services: Services) -> None:
    app = create_app(app_services)
    assert isinstance(app, IdhubApp)
    stack = app.build_middleware_stack()
    assert isinstance(stack, RequestLayer)
    # The router's own dispatch (`IndexedRouter.app`), called directly while the router has
    # no middleware of its own (web/app.py, main 973cbfb): nothing between them.
    assert app.router.middleware_stack == app.router.app
    assert stack.app == app.router.app


def test_an_unexpected_error_is_a_500_with_the_request_id_and_the_security_headers(
    app_services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = create_app(app_services)
    app.router.routes.append(Route("/broken", broken))
    with serve_asgi(app) as url, caplog.at_level("ERROR", logger="idhub.web"):
        response = httpx.get(url + "/broken", headers={"X-Request-ID": "req-broken-1"})
        # The server closes that connection and keeps serving.
        assert httpx.get(url + "/healthz").status_code == 200
    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    assert response.json()["request_id"] == "req-broken-1"
    assert "Traceback" not in response.text and "a bug" not in response.text
    assert response.headers["x-request-id"] == "req-broken-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert response.headers["cache-control"] == "no-store"
    assert "unexpected error in request req-broken-1" in caplog.text
    metrics = app_services.metrics  # the app counts through the Prometheus adapter
    assert isinstance(metrics, PrometheusMetrics)
    assert counted(metrics, 500)


def test_refusals_and_error_answers_leave_through_the_same_headers_and_counts() -> None:
    metrics = PrometheusMetrics()

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(404)

    long_path = "/" + "a" * 300
    refused = drive(layer(not_found, metrics), http_scope(long_path))
    assert refused[0]["status"] == 414
    check_headed(refused[0])
    too_big = [(b"content-length", b"5000"), (b"x-request-id", b"req-too-big")]
    (start, _) = drive(layer(not_found, metrics), http_scope("/token", too_big))
    assert start["status"] == 413
    check_headed(start, "req-too-big")
    (start, _) = drive(layer(not_found, metrics), http_scope())
    assert start["status"] == 404
    check_headed(start)
    assert counted(metrics, 414) and counted(metrics, 413) and counted(metrics, 404)


def test_a_streamed_body_over_the_limit_is_a_413_and_a_form_nul_a_400() -> None:
    metrics = PrometheusMetrics()

    async def reads(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        await Response("read")(scope, receive, send)

    (start, _) = drive(layer(reads, metrics), http_scope("/token"), b"x" * 101)
    assert start["status"] == 413
    check_headed(start)
    form = [(b"content-type", b"application/x-www-form-urlencoded")]
    (start, _) = drive(layer(reads, metrics), http_scope("/token", form), b"a=%00")
    assert start["status"] == 400
    (start, _) = drive(layer(reads, metrics), http_scope("/token", form), b"a=b")
    assert start["status"] == 200
    check_headed(start)


def test_an_error_after_the_answer_started_is_not_answered_twice() -> None:
    metrics = PrometheusMetrics()

    def failing_after_start(exc: Exception) -> Callable[[Scope, Receive, Send], object]:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise exc

        return app

    for exc in (RuntimeError("late"), HTTPException(404)):
        sent: list[Message] = []
        with pytest.raises(type(exc)):
            # The server is left to log it and close the connection.
            drive_into(layer(failing_after_start(exc), metrics), http_scope(), sent)
        assert [m["type"] for m in sent] == ["http.response.start"]
        assert sent[0]["status"] == 200
    assert counted(metrics, 200)


def drive_into(asgi: RequestLayer, scope: Scope, sent: list[Message]) -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(asgi(scope, receive, send))


def test_a_response_start_is_rewritten_once_and_static_files_stay_cacheable() -> None:
    metrics = PrometheusMetrics()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"server", b"x"), (b"x-content-type-options", b"sniff-away")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    start, body = drive(layer(app, metrics), http_scope())
    check_headed(start)
    assert dict(start["headers"])[b"x-content-type-options"] == b"nosniff"
    assert dict(start["headers"])[b"cache-control"] == b"no-store"
    assert body == {"type": "http.response.body", "body": b"ok"}
    (start, _) = drive(layer(app, metrics), http_scope("/static/idhub.css"))
    assert b"cache-control" not in dict(start["headers"])


def test_only_debug_mode_answers_with_the_traceback_page() -> None:
    """`[server] debug` (refused in production mode) keeps Starlette's traceback page."""

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("the details")

    for debug in (False, True):
        sent: list[Message] = []
        with pytest.raises(RuntimeError):
            drive_into(layer(broken, PrometheusMetrics(), debug=debug), http_scope(), sent)
        start, body = sent
        assert start["status"] == 500
        check_headed(start)
        assert (b"the details" in body["body"]) is debug


def test_an_error_answer_that_fails_itself_ends_in_the_last_resort_500() -> None:
    async def missing(scope: Scope, receive: Receive, send: Send) -> None:
        raise LookupError("no such thing")

    async def broken_handler(request: Request, exc: Exception) -> Response:
        raise RuntimeError("the error page broke")

    asgi = layer(missing, PrometheusMetrics())
    asgi._failures.handlers[LookupError] = broken_handler
    sent: list[Message] = []
    with pytest.raises(RuntimeError):
        drive_into(asgi, http_scope(), sent)
    start, body = sent
    assert start["status"] == 500
    check_headed(start)
    assert b"server_error" in body["body"]
