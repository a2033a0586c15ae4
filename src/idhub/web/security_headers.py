"""Headers every response carries, added by the one request layer (web/middleware.py) to
every answer that leaves through it, so error pages, static files, refusals and the JSON APIs
get them alike.

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
from operator import itemgetter

from starlette.requests import Request
from starlette.routing import Match, Mount, Route

HSTS = "max-age=31536000"
STATIC_PREFIX = "/static/"

_MAX_SHAPES = 256
_name = itemgetter(0)
Tails = dict[tuple[bytes, ...], tuple[tuple[bytes, bytes], ...] | None]


class ResponseHeaders:
    """The header lines of every response, computed once per response start by the request
    layer (web/middleware.py) from the ones the application set."""

    def __init__(self, *, issuer: str) -> None:
        # Raw (lower-case bytes) header lines, built once: this runs on every response, and
        # `MutableHeaders` decoded and re-scanned the whole list for each header it touched.
        always = [(b"x-content-type-options", b"nosniff")]
        if issuer.lower().startswith("https://"):
            always.append((b"strict-transport-security", HSTS.encode()))
        self._always = tuple(always)
        self._own = frozenset(name for name, _ in always) | {b"server"}
        self._no_store = (b"cache-control", b"no-store")
        # What follows the request id, per header shape: the given lines' names in order ->
        # our lines, or None when the shape drops a line (`server`, one of ours) and takes
        # `rebuilt`; one table for static files, one for the rest. Only names are kept, never
        # a value (no token, cookie or redirect stays here), and names are chosen by the
        # code, so a few shapes occur.
        self._tails: tuple[Tails, Tails] = ({}, {})

    def head(
        self,
        given: Iterable[tuple[bytes, bytes]],
        static: bool,
        extra: tuple[bytes, bytes],
    ) -> list[tuple[bytes, bytes]]:
        """The response's header lines without `server` and the ones set here, plus ours and
        `extra` (the request id); `static`: a static file, cacheable unless it says not.

        What is kept, dropped and added depends on the lines' names alone, so it is decided
        once per shape (`_tails`); an answer of a known shape that drops nothing (every JSON
        answer) is its own lines as given, the id and the shape's tail, copied in C. The
        result is the same list `rebuilt` makes (tests/test_response_head_cache.py)."""
        if type(given) is not list:
            given = list(given)
        tails = self._tails[static]
        # The names in C (callgrind: fewer instructions than a comprehension's function).
        shape = tuple(map(_name, given))
        try:
            tail = tails[shape]
        except KeyError:
            tail = self._learn(tails, shape, static)
        if tail is None:
            return self.rebuilt(given, static=static, extra=extra)
        return [*given, extra, *tail]

    def _learn(
        self, tails: Tails, shape: tuple[bytes, ...], static: bool
    ) -> tuple[tuple[bytes, bytes], ...] | None:
        names = [key.lower() for key in shape]
        tail: tuple[tuple[bytes, bytes], ...] | None = None
        if self._own.isdisjoint(names):
            cached = static or b"cache-control" in names
            tail = self._always if cached else (*self._always, self._no_store)
        if len(tails) >= _MAX_SHAPES:
            # Never reached by idhub's own answers; should it be, the shapes in use come back.
            tails.clear()
        tails[shape] = tail
        return tail

    def rebuilt(
        self,
        given: Iterable[tuple[bytes, bytes]],
        *,
        static: bool,
        extra: tuple[bytes, bytes],
    ) -> list[tuple[bytes, bytes]]:
        """`head` worked out line by line, for a shape that drops a line (and the reference
        the per-shape tails are tested against)."""
        own = self._own
        kept: list[tuple[bytes, bytes]] = []
        cached = static
        for key, value in given:
            name = key.lower()
            if name == b"cache-control":
                cached = True
            elif name in own:
                continue
            kept.append((key, value))
        kept.append(extra)
        kept.extend(self._always)
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
