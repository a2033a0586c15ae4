"""The registry of CAS services and how a `service` URL is matched to one.

A service is registered with one or more URL patterns. A requested service URL matches a
pattern when:

- scheme, host and port are equal (host case-insensitive, default ports implied), and the URL
  carries no user info and no fragment;
- the path is equal, or the pattern's path ends in `/` and the URL's path continues it, or the
  URL's path continues the pattern's path after a `/` (an anchored prefix: `/oa` matches
  `/oa/login` but never `/oa-evil`); dot segments (`/./`, `/../`) never match;
- when the pattern has a query, the URL has the same query parameters in any order; a pattern
  without a query accepts any query (applications put their return page there).

A bare string prefix never matches: `https://oa.example.com.evil` is another host than
`https://oa.example.com`, and `https://oa.example.com@evil` is refused outright.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.cas import ATTRIBUTES, CasService, ServiceStore
from idhub.core.clock import Clock
from idhub.core.transactions import UnitOfWork
from idhub.errors import Conflict, InvalidInput, NotFound

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_SERVICE_URL = 2000
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class ServiceUrl:
    """A URL split into the parts matching compares (see the module docstring)."""

    scheme: str
    host: str
    port: int
    path: str
    query: tuple[tuple[str, str], ...]
    has_query: bool

    @cached_property
    def normalized(self) -> str:
        """One spelling per URL, so a ticket is bound to the service however it was written."""
        default = DEFAULT_PORTS.get(self.scheme)
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        return urlunsplit((self.scheme, netloc, self.path or "/", urlencode(self.query), ""))


@lru_cache(maxsize=4096)
def parse_service_url(url: str) -> ServiceUrl | None:
    """The parts of an absolute http(s) URL, or None when it is not one we accept. Pure, so
    remembered: every login matches the same few service URLs against the same patterns."""
    if not url or len(url) > MAX_SERVICE_URL or any(c in url for c in "\\\r\n\t "):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.fragment:
        return None
    if "@" in parts.netloc:
        return None
    path = parts.path or "/"
    if any(seg in (".", "..") for seg in path.split("/")) or "%2e" in path.lower():
        return None
    query = tuple(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    return ServiceUrl(
        scheme=scheme,
        host=parts.hostname.lower(),
        port=port if port is not None else DEFAULT_PORTS[scheme],
        path=quote(path, safe="/:@!$&'()*+,;=-._~%"),
        query=query,
        has_query=bool(parts.query),
    )


def check_service_match(pattern: str, url: str) -> bool:
    """Pure rule: does the service URL `url` match the registered `pattern`?"""
    want, got = parse_service_url(pattern), parse_service_url(url)
    if want is None or got is None:
        return False
    if (want.scheme, want.host, want.port) != (got.scheme, got.host, got.port):
        return False
    if want.path != got.path:
        prefix = want.path if want.path.endswith("/") else want.path + "/"
        if not got.path.startswith(prefix):
            return False
    return not want.has_query or want.query == got.query


def check_service_url(service: CasService, url: str) -> bool:
    return any(check_service_match(p, url) for p in service.urls)


def check_proxy_callback(service: CasService, url: str) -> bool:
    return any(check_service_match(p, url) for p in service.proxy_callbacks)


@dataclass
class _Cache:
    services: list[CasService] = field(default_factory=list)
    loaded_at: float | None = None


class CasServiceRegistry:
    """`services.cas_services`: register, list, remove and find CAS services."""

    # Seconds the list used for matching is reused; an admin's change reaches every replica
    # within this time.
    CACHE_SECONDS = 5.0

    def __init__(
        self, store: ServiceStore, audit: Auditor, clock: Clock, *, uow: UnitOfWork
    ) -> None:
        self._uow = uow
        self._store = store
        self._audit = audit
        self._clock = clock
        self._cache = _Cache()

    def register(
        self,
        name: str,
        *,
        urls: Sequence[str],
        domain: str | None = None,
        display_name: str = "",
        attributes: Sequence[str] | None = None,
        first_party: bool = False,
        proxy_callbacks: Sequence[str] = (),
        single_logout: bool = True,
        require_mfa: bool = False,
        actor: Actor | None = None,
        ctx: RequestContext | None = None,
    ) -> CasService:
        service = plan_service(
            name,
            urls=urls,
            domain=domain,
            display_name=display_name,
            attributes=attributes,
            first_party=first_party,
            proxy_callbacks=proxy_callbacks,
            single_logout=single_logout,
            require_mfa=require_mfa,
            now=self._clock.now(),
        )
        if self._store.get(service.name) is not None:
            raise Conflict(f"a CAS service named {service.name!r} exists already")
        with self._uow.atomic() as tx:
            self._store.insert(service)
            tx.record(
                EventType.CAS_SERVICE_CREATED,
                actor=actor or Actor.system("cli"),
                target=service.name,
                details={k: v for k, v in service.describe().items() if k != "created_at"},
                ctx=ctx,
            )
        self._cache = _Cache()
        return service

    def remove(self, name: str, *, actor: Actor | None = None) -> None:
        with self._uow.atomic() as tx:
            if not self._store.delete(name):
                raise NotFound(f"no CAS service named {name!r}")
            tx.record(
                EventType.CAS_SERVICE_REMOVED, actor=actor or Actor.system("cli"), target=name
            )
        self._cache = _Cache()

    def list(self) -> list[CasService]:
        return self._store.all()

    def get(self, name: str) -> CasService | None:
        return self._store.get(name)

    def find(self, url: str) -> CasService | None:
        """The registered service `url` belongs to, or None (an unknown service)."""
        return next((s for s in self._current() if check_service_url(s, url)), None)

    def named(self, name: str) -> CasService | None:
        """Like `get`, from the list `find` uses (validation is the hot path)."""
        return next((s for s in self._current() if s.name == name), None)

    def _current(self) -> Sequence[CasService]:
        now = self._clock.now()
        cache = self._cache
        if cache.loaded_at is None or not 0 <= now - cache.loaded_at < self.CACHE_SECONDS:
            cache = self._cache = _Cache(self._store.all(), now)
        return cache.services


def plan_service(
    name: str,
    *,
    urls: Sequence[str],
    domain: str | None,
    display_name: str,
    attributes: Sequence[str] | None,
    first_party: bool,
    proxy_callbacks: Sequence[str],
    single_logout: bool,
    now: float,
    require_mfa: bool = False,
) -> CasService:
    """Checks an admin's input and builds the service (pure; raises `InvalidInput`)."""
    if not _NAME.match(name):
        raise InvalidInput(
            f"CAS service name {name!r}: lower-case letters, digits, '.', '_' or '-'"
        )
    if not urls:
        raise InvalidInput("a CAS service needs at least one --url")
    _require_patterns(urls, what="--url")
    _require_patterns(proxy_callbacks, what="--proxy-callback")
    chosen = tuple(attributes) if attributes is not None else ATTRIBUTES
    unknown = sorted(set(chosen) - set(ATTRIBUTES))
    if unknown:
        raise InvalidInput(
            f"unknown attribute(s) {', '.join(unknown)} (known: {', '.join(ATTRIBUTES)})"
        )
    return CasService(
        name=name,
        urls=tuple(urls),
        domain=domain or name,
        display_name=display_name,
        attributes=tuple(dict.fromkeys(chosen)),
        first_party=first_party,
        proxy_callbacks=tuple(proxy_callbacks),
        single_logout=single_logout,
        created_at=now,
        require_mfa=require_mfa,
    )


def _require_patterns(patterns: Iterable[str], *, what: str) -> None:
    for pattern in patterns:
        if parse_service_url(pattern) is None:
            raise InvalidInput(
                f"{what} {pattern!r}: an absolute http(s) URL without user info or fragment"
            )
