"""Entry point for `uvicorn --factory idhub.web.asgi:create`, used by `idhub serve --workers N`."""

from __future__ import annotations

from starlette.applications import Starlette

from idhub.bootstrap import Services
from idhub.config import load_settings
from idhub.web.app import create_app


def create() -> Starlette:
    return create_app(Services(load_settings()))
