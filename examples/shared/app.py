"""The Starlette application around a system's routes: the signed session cookie (named per
system, because browsers share cookies between ports of one host), sign-in routes, and the
redirect to `/login` for pages that need a signed-in person."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from examples.shared.sso import NotSignedIn, Sso, StaleForm
from idhub.sdk import PdpError


def system_app(sso: Sso, routes: Sequence[BaseRoute]) -> Starlette:
    settings = sso.settings

    async def not_signed_in(request: Request, _exc: Exception) -> Response:
        return sso.login_redirect(request)

    async def stale_form(request: Request, exc: Exception) -> Response:
        return sso.pages.error(request, sso.current(request), str(exc), 403)

    async def no_decision(request: Request, exc: Exception) -> Response:
        # idhub could not answer: nothing is allowed meanwhile, and the page says why.
        message = f"idhub 暂时无法决策 idhub could not decide, try again: {exc}"
        return sso.pages.error(request, sso.current(request), message, 503)

    return Starlette(
        routes=[*sso.routes(), *routes],
        middleware=[
            Middleware(
                SessionMiddleware,
                secret_key=settings.session_key,
                session_cookie=f"{settings.client_id}_session",
                same_site="lax",
                https_only=settings.base_url.startswith("https://"),
            )
        ],
        exception_handlers={
            NotSignedIn: not_signed_in,
            StaleForm: stale_form,
            PdpError: no_decision,
        },
    )
