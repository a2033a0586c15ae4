"""The Starlette application: each area contributes a `routes(services)` list; errors are
mapped to responses in one place (`web/errors.py`)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from idhub.bootstrap import Services
from idhub.web.errors import exception_handlers
from idhub.web.middleware import RequestContextMiddleware

STATIC_DIR = Path(__file__).parent / "static"

# Modules exposing `routes(services) -> list[BaseRoute]`, in the order they are matched.
ROUTE_MODULES = (
    "idhub.web.health",
    "idhub.web.discovery",
    "idhub.web.oauth",
    "idhub.web.login",
    "idhub.web.authorize",
    "idhub.web.logout",
    "idhub.web.saml",
    "idhub.web.audit_api",
    "idhub.web.pdp_api",
)


def create_app(services: Services) -> Starlette:
    routes: list[BaseRoute] = []
    for name in ROUTE_MODULES:
        module: Any = importlib.import_module(name)
        routes.extend(module.routes(services))
    routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for hook in services.startup_hooks:
            hook()
        try:
            yield
        finally:
            for hook in reversed(services.shutdown_hooks):
                hook()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestContextMiddleware)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.services = services
    return app
