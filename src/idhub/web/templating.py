"""Jinja2 rendering with autoescape, the chosen locale's messages and a per-page CSP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from idhub.web.i18n import pick_locale, translator

_ENV = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)

SECURITY_HEADERS = {
    # form-action must allow the relying parties' redirect URIs: browsers apply it to the
    # redirect that follows a form post (login, consent).
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self' http: https:"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def default_locale(request: Request) -> str:
    services = getattr(request.app.state, "services", None)
    return services.settings.server.default_locale if services is not None else "zh-CN"


def render(
    request: Request, template: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    locale = pick_locale(request, default_locale(request))
    page = _ENV.get_template(template).render(
        request=request,
        locale=locale,
        t=translator(locale),
        request_id=getattr(request.state, "request_id", None),
        **context,
    )
    response = HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)
    if request.query_params.get("lang") == locale:
        response.set_cookie("lang", locale, max_age=365 * 86400, samesite="lax", httponly=True)
    return response


def render_error(
    request: Request, *, status: int, title: str, message: str, key: str | None = None
) -> HTMLResponse:
    """The error page; `key` names the sentence in the page's language to show instead of
    `message` (which stays the JSON answer's English `error_description`)."""
    locale = pick_locale(request, default_locale(request))
    text = translator(locale).get(key, message) if key is not None else message
    return render(request, "error.html", {"code": title, "message": text}, status=status)
