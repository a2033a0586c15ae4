"""HTML pages: Jinja2 with autoescaping, the system's own templates over the shared layout
(header with the signed-in person, their department and roles, the link to the other system
and the sign-out button)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from examples.shared.local_sessions import SignedIn
from examples.shared.settings import SystemSettings

SHARED = Path(__file__).parent / "templates"


class Pages:
    def __init__(self, templates: Path, *, settings: SystemSettings, title: str) -> None:
        self.env = Environment(
            loader=ChoiceLoader([FileSystemLoader(templates), FileSystemLoader(SHARED)]),
            autoescape=select_autoescape(default=True),
        )
        self.settings = settings
        self.title = title

    def render(
        self, request: Request, name: str, *, user: SignedIn | None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        body = self.env.get_template(name).render(
            system=self.title,
            settings=self.settings,
            user=user,
            notice=request.query_params.get("notice", ""),
            **ctx,
        )
        return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    def error(
        self, request: Request, user: SignedIn | None, message: str, status: int
    ) -> HTMLResponse:
        return self.render(request, "error.html", user=user, status=status, message=message)
