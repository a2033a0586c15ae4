"""The router idhub serves with: Starlette's, with the routes that can match a fixed path
looked up in a dict instead of tried one by one.

Starlette tries every route's regular expression in order until one matches; with ~40 routes
the decision API (near the end of the list) paid ~40 matches per request, about a tenth of its
in-process CPU. For each route path without parameters, the index holds every route whose
pattern matches that path (the route itself, parameterised routes and mounts that would also
match it), in the original order, so the first full match and the 405 partial match are the
ones Starlette's scan finds. Any other path (parameters, typos, 404s) takes Starlette's own
scan, so the index can only ever be smaller than the list it replaces, never different.

Function endpoints run without Starlette's per-route exception wrapper (`lean_endpoint`): the
application's one handler of errors, around the router, answers them with the same handlers
(web/middleware.py in idhub, Starlette's exception middleware in a plain Starlette app). The
wrapper wrapped `send` once more and caught and re-raised what it did not handle, on every
request.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from starlette._utils import get_route_path, is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, Router, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

# Every app `request_response` builds runs this code: a route whose app runs it is a plain
# function endpoint (no route middleware around it).
# (A Starlette whose wrapper is no plain function: the sentinel matches nothing.)
_WRAPPED_ENDPOINT = getattr(request_response(lambda request: Response()), "__code__", object())


def lean_endpoint(func: Callable[[Request], Any]) -> ASGIApp:
    """Starlette's `request_response` without its exception wrapper: an error leaves for the
    handler around the router, which answers it as the wrapper would have."""
    on_loop = is_async_callable(func)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        response: Response
        if on_loop:
            response = await func(request)
        else:  # a synchronous endpoint runs in the threadpool, as before
            response = await run_in_threadpool(func, request)
        await response(scope, receive, send)

    return app


def make_lean(routes: Sequence[BaseRoute]) -> None:
    """Gives each plain function route `lean_endpoint` in place of `request_response`."""
    for route in routes:
        if isinstance(route, Route) and getattr(route.app, "__code__", None) is _WRAPPED_ENDPOINT:
            route.app = lean_endpoint(route.endpoint)


def candidates_by_path(routes: Sequence[BaseRoute]) -> dict[str, tuple[BaseRoute, ...]]:
    """Fixed route path -> the routes (in order) that may match a request for that path."""
    index: dict[str, tuple[BaseRoute, ...]] = {}
    for route in routes:
        if not isinstance(route, Route) or "{" in route.path or route.path in index:
            continue
        path = route.path
        index[path] = tuple(r for r in routes if _may_match(r, path))
    return index


def _may_match(route: BaseRoute, path: str) -> bool:
    if isinstance(route, Route | Mount):
        return route.path_regex.match(path) is not None
    return True  # a kind of route whose matching is not a path pattern: always tried


def direct_routes(index: dict[str, tuple[BaseRoute, ...]]) -> dict[str, Route]:
    """Fixed path -> its route, where Starlette's scan would take that route first for every
    method it serves: the first candidate is a plain `Route` of exactly that path (no
    parameters to convert) with a list of methods. A request for another method still goes
    the whole way (the 405, or a later route serving that method)."""
    direct: dict[str, Route] = {}
    for path, found in index.items():
        first = found[0] if found else None
        if type(first) is Route and first.path == path and first.methods:
            direct[path] = first
    return direct


class IndexedRouter(Router):
    def __init__(self, routes: Sequence[BaseRoute], **kwargs: Any) -> None:
        super().__init__(routes, **kwargs)
        self._indexed_count = -1
        self._index: dict[str, tuple[BaseRoute, ...]] = {}
        self._direct: dict[str, Route] = {}

    def app(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """What Starlette's `Router.app` does, as a plain function returning what the caller
        awaits: for a fixed path the route's own app, called here (no coroutine of the
        router's between the request layer and the endpoint); otherwise `_scan`."""
        if scope["type"] == "http":
            if self._indexed_count != len(self.routes):  # a route added after start-up
                make_lean(self.routes)
                self._index = candidates_by_path(self.routes)
                self._direct = direct_routes(self._index)
                self._indexed_count = len(self.routes)
            path = get_route_path(scope)
            route = self._direct.get(path)
            if route is not None and scope["method"] in route.methods:  # type: ignore[operator]
                # What Starlette's scan, `Route.matches` and `Route.handle` do for the first
                # route's full match, without the regex, the match tuple and the second
                # method check.
                if "router" not in scope:
                    scope["router"] = self
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", {}))
                return cast(Coroutine[Any, Any, None], route.app(scope, receive, send))
            found = self._index.get(path)
            if found is not None:
                return self._scan(found, scope, receive, send)
        return super().app(scope, receive, send)

    async def _scan(
        self, routes: tuple[BaseRoute, ...], scope: Scope, receive: Receive, send: Send
    ) -> None:
        if not await self._dispatch(routes, scope, receive, send):
            await super().app(scope, receive, send)

    async def _dispatch(
        self, routes: tuple[BaseRoute, ...], scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Starlette's match loop over `routes`; False when none matched at all (the full
        scan then answers with its redirect or 404, as it would have)."""
        scope.setdefault("router", self)
        partial: BaseRoute | None = None
        partial_scope: Scope = {}
        for route in routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope["route"] = route
                scope.update(child_scope)
                await route.handle(scope, receive, send)
                return True
            if match is Match.PARTIAL and partial is None:
                partial, partial_scope = route, child_scope
        if partial is None:
            return False
        scope["route"] = partial
        scope.update(partial_scope)
        await partial.handle(scope, receive, send)
        return True
