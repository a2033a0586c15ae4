"""Entry point for `uvicorn --factory idhub.web.asgi:create`, used by `idhub serve --workers N`."""

from __future__ import annotations

from starlette.applications import Starlette

from idhub.bootstrap import Services
from idhub.config import load_settings, require_production_ready
from idhub.web.app import create_app


def create() -> Starlette:
    settings = load_settings()
    require_production_ready(settings)
    return create_app(Services(settings))
