"""The Starlette application: each area contributes a `routes(services)` list; errors are
mapped to responses in one place (`web/errors.py`)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from idhub.bootstrap import Services
from idhub.web.errors import FailureAnswers, exception_handlers
from idhub.web.limits import RequestLimits
from idhub.web.middleware import RequestLayer
from idhub.web.observe import RequestObserver, mount_prefixes, route_templates
from idhub.web.proxies import TrustedProxies
from idhub.web.routing import IndexedRouter
from idhub.web.security_headers import ResponseHeaders

STATIC_DIR = Path(__file__).parent / "static"

# Modules exposing `routes(services) -> list[BaseRoute]`, in the order they are matched.
ROUTE_MODULES = (
    "idhub.web.health",
    "idhub.web.discovery",
    "idhub.web.oauth",
    "idhub.web.login",
    "idhub.web.upstream",
    "idhub.web.account",
    "idhub.web.authorize",
    "idhub.web.logout",
    "idhub.web.cas",
    "idhub.web.saml",
    "idhub.web.audit_api",
    "idhub.web.pdp_api",
    "idhub.web.metrics",
    "idhub.web.scim",
)


class IdhubApp(Starlette):
    """Starlette with one request layer (web/middleware.py) in place of its middleware stack,
    and the router that finds fixed paths by dict (web/routing.py)."""

    def __init__(self, *, layer: Callable[[ASGIApp], ASGIApp], **kwargs: Any) -> None:
        self._layer = layer
        super().__init__(**kwargs)
        self.router = IndexedRouter(self.router.routes, lifespan=kwargs.get("lifespan"))

    def build_middleware_stack(self) -> ASGIApp:
        # Instead of Starlette's error middleware, the user middleware and its exception
        # middleware: `RequestLayer` does what each of them did, in one layer. It calls the
        # router's own `app`, not `Router.__call__` (one more coroutine per request, which
        # only forwards there while the router has no middleware of its own, as here).
        router = self.router
        target = router.app if router.middleware_stack == router.app else router
        return self._layer(target)


def request_limits(services: Services) -> RequestLimits:
    limits = services.settings.limits
    return RequestLimits(
        max_api_body=limits.max_api_body,
        max_form_body=limits.max_form_body,
        max_request_line=limits.max_request_line,
        max_headers=limits.max_headers,
        max_header_bytes=limits.max_header_bytes,
    )


def create_app(services: Services) -> Starlette:
    routes: list[BaseRoute] = []
    for name in ROUTE_MODULES:
        module: Any = importlib.import_module(name)
        routes.extend(module.routes(services))
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))
    services.start_metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Background jobs (logout delivery, syncs, policy reloads, audit sinks, ...) run
        # while the app serves; stopping joins them within a bound.
        services.runtime.start()
        try:
            yield
        finally:
            services.runtime.stop()

    server = services.settings.server
    observer = RequestObserver(
        metrics=services.metrics,
        templates=route_templates(routes),
        mounts=mount_prefixes(routes),
        access_records=server.log_format == "json",
    )

    def layer(router: ASGIApp) -> ASGIApp:
        return RequestLayer(
            router,
            proxies=_proxies(services),
            limits=request_limits(services),
            headers=ResponseHeaders(issuer=server.issuer),
            observer=observer,
            failures=FailureAnswers(debug=server.debug),
        )

    app = IdhubApp(
        layer=layer,
        debug=server.debug,
        routes=routes,
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.services = services
    return app


def _proxies(services: Services) -> TrustedProxies:
    server = services.settings.server
    return TrustedProxies(server.trusted_proxies, header=server.proxy_header)
