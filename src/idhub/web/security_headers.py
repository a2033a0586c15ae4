"""Headers every response carries, added outside everything else so error pages, static files
and the JSON APIs get them alike.

- `X-Content-Type-Options: nosniff`: a browser never guesses a JSON or text answer is HTML.
- `Cache-Control: no-store` on every response that sets no caching policy of its own: tokens,
  userinfo, consent and login pages and API answers carry personal data or credentials, and
  a shared cache must keep none of them. Only responses that say they are public (discovery,
  JWKS) and the static files are left cacheable.
- `Strict-Transport-Security` when the issuer is https (the proxy terminates TLS; see
  docs/deployment.md), so a browser never downgrades the sign-in pages.
- no `Server` banner: uvicorn's is switched off in the serve options, and one an app set is
  dropped here.
- `Allow` on 405 answers lists every method the path takes (`allowed_methods`).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = "max-age=31536000"
STATIC_PREFIX = "/static/"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, issuer: str) -> None:
        self.app = app
        # Raw (lower-case bytes) header lines, built once: this runs on every response, and
        # `MutableHeaders` decoded and re-scanned the whole list for each header it touched.
        always = [(b"x-content-type-options", b"nosniff")]
        if issuer.lower().startswith("https://"):
            always.append((b"strict-transport-security", HSTS.encode()))
        self._always = tuple(always)
        self._no_store = (b"cache-control", b"no-store")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self._headers(message.get("headers", ()), static=static)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _headers(
        self, given: Iterable[tuple[bytes, bytes]], *, static: bool
    ) -> list[tuple[bytes, bytes]]:
        """The response's header lines without `server` and the ones set here, plus ours."""
        ours = self._always
        kept: list[tuple[bytes, bytes]] = []
        cached = static
        for key, value in given:
            name = key.lower()
            if name == b"cache-control":
                cached = True
            elif name == b"server" or any(name == own for own, _ in ours):
                continue
            kept.append((key, value))
        kept.extend(ours)
        if not cached:
            kept.append(self._no_store)
        return kept


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (several routes may share one
    path, one per method)."""
    methods: set[str] = set()
    routes: Iterable[object] = getattr(request.app, "routes", ())
    for route in routes:
        if isinstance(route, Route):
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods or set()
        elif isinstance(route, Mount) and request.url.path.startswith(route.path + "/"):
            methods |= {"GET", "HEAD"}
    return sorted(methods)
