"""The router idhub serves with (web/routing.py) answers every path as Starlette's own scan
does: the same route, the same 405, the same redirect and 404; only fixed paths are indexed."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Mount, Route, Router, request_response
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from idhub.bootstrap import Services
from idhub.web.app import create_app
from idhub.web.routing import IndexedRouter, candidates_by_path


def _answer(name: str) -> Callable[[Request], PlainTextResponse]:
    def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{name} {request.path_params}")

    return endpoint


def _routes() -> list[BaseRoute]:
    # A parameterised route before fixed ones it also matches, one path served by two routes
    # (one per method), a fixed path only a later route takes, and a mount.
    return [
        Route("/items/{name}", _answer("param"), methods=["GET"]),
        Route("/items/new", _answer("new-post"), methods=["POST"]),
        Route("/items/new", _answer("new-put"), methods=["PUT"]),
        Route("/only-post", _answer("only-post"), methods=["POST"]),
        Route("/a/", _answer("slash")),
        Mount("/files", app=PlainTextResponse("mounted")),
        Route("/files", _answer("files-route")),
    ]


def _client(router: Router) -> TestClient:
    app = Starlette()
    app.router = router
    return TestClient(app, follow_redirects=False)


@pytest.mark.parametrize(
    ("method", "path"),
    list(
        itertools.product(
            ["GET", "POST", "PUT", "DELETE"],
            ["/items/new", "/items/x", "/only-post", "/a", "/a/", "/files", "/files/x", "/nope"],
        )
    ),
)
def test_every_path_gets_the_answer_of_starlettes_scan(method: str, path: str) -> None:
    indexed = _client(IndexedRouter(_routes())).request(method, path)
    scanned = _client(Router(_routes())).request(method, path)
    assert (indexed.status_code, indexed.text, indexed.headers.get("location")) == (
        scanned.status_code,
        scanned.text,
        scanned.headers.get("location"),
    )


def test_the_index_holds_every_route_that_may_match_in_order() -> None:
    routes = _routes()
    index = candidates_by_path(routes)
    assert index["/items/new"] == (routes[0], routes[1], routes[2])
    assert index["/files"] == (routes[6],)  # the mount takes /files/... only
    assert "/items/{name}" not in index


def test_idhub_serves_with_the_index(services: Services) -> None:
    app = create_app(services)
    assert isinstance(app.router, IndexedRouter)
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/api/v1/authz/check").status_code == 405


def test_function_endpoints_leave_their_errors_to_the_apps_handlers() -> None:
    """Without Starlette's per-route wrapper (`lean_endpoint`), an endpoint's error still gets
    its handler's answer, from the handler around the router; a plain ASGI route is kept."""

    def gone(request: Request) -> PlainTextResponse:
        raise HTTPException(410, "gone for good")

    async def teapot(request: Request) -> PlainTextResponse:
        raise HTTPException(418, "short and stout")

    class Raw:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await PlainTextResponse("raw")(scope, receive, send)

    raw = Raw()

    routes = [Route("/gone", gone), Route("/teapot", teapot), Route("/raw", raw)]
    router = IndexedRouter(routes)
    with _client(router) as client:
        assert (client.get("/gone").status_code, client.get("/gone").text) == (410, "gone for good")
        assert client.get("/teapot").status_code == 418
        assert client.get("/raw").text == "raw"
    wrapped = getattr(request_response(gone), "__code__", None)
    assert wrapped is not None
    assert all(getattr(r.app, "__code__", None) is not wrapped for r in routes[:2])
    assert routes[2].app is raw


def test_a_fixed_path_is_dispatched_directly_with_the_scope_starlette_sets() -> None:
    """The direct dispatch (`direct_routes`) hands the endpoint the scope keys Starlette's scan
    sets (route, endpoint, path_params, router); a method the first route does not serve
    still takes the scan (its 405, or a later route of the same path)."""
    seen: list[dict[str, object]] = []

    def look(request: Request) -> PlainTextResponse:
        keys = ("route", "endpoint", "path_params")
        seen.append({key: request.scope[key] for key in keys})
        seen[-1]["router_kind"] = type(request.scope["router"]).__name__
        return PlainTextResponse("ok")

    def routes() -> list[BaseRoute]:
        return [
            Route("/look", look, methods=["POST"]),
            Route("/look", _answer("look-put"), methods=["PUT"]),
            Route("/items/{name}", _answer("param"), methods=["GET"]),
            Route("/items/new", look, methods=["GET"]),
        ]

    indexed, scanned = IndexedRouter(routes()), Router(routes())
    answers = []
    for router in (indexed, scanned):
        with _client(router) as client:
            answers.append([client.request(m, "/look").text for m in ("POST", "PUT", "GET")])
            answers[-1].append(client.get("/items/new").text)
    assert answers[0] == answers[1]
    assert answers[0] == ["ok", "look-put {}", "Method Not Allowed", "param {'name': 'new'}"]
    assert sorted(indexed._direct) == ["/look"]  # /items/new is the parameterised route's first
    direct, scan = seen
    assert direct["route"] is indexed.routes[0] and scan["route"] is scanned.routes[0]
    assert direct["endpoint"] is scan["endpoint"] is look
    assert direct["path_params"] == scan["path_params"] == {}
    assert direct["router_kind"] == "IndexedRouter" and scan["router_kind"] == "Router"
