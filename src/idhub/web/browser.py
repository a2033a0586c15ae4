"""What every browser-facing page shares: the SSO session cookie, CSRF-protected forms and the
translated error page. One `Browser` is built per app and handed to the page modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from idhub.bootstrap import Services
from idhub.core.sessions import COOKIE_NAME
from idhub.web.csrf import CsrfGuard
from idhub.web.i18n import pick_locale, translator
from idhub.web.templating import default_locale, render


@dataclass(frozen=True)
class Browser:
    guard: CsrfGuard
    secure: bool
    session_ttl: float

    @staticmethod
    def session_cookie(request: Request) -> str | None:
        return request.cookies.get(COOKIE_NAME)

    def set_session_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=int(self.session_ttl),
            httponly=True,
            samesite="lax",
            secure=self.secure,
            path="/",
        )

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE_NAME, httponly=True, samesite="lax", secure=self.secure, path="/"
        )

    def form_page(
        self, request: Request, template: str, context: dict[str, Any], *, status: int = 200
    ) -> Response:
        """A page with a form: its CSRF token in the context and the matching cookie set."""
        token, new_cookie = self.guard.token(request)
        response = render(request, template, {**context, "csrf_token": token}, status=status)
        self.guard.set_cookie(response, new_cookie)
        return response

    @staticmethod
    def error_page(request: Request, key: str, code: str, *, status: int = 400) -> Response:
        """The error page with the translated sentence `key` and the protocol code `code`."""
        t = translator(pick_locale(request, default_locale(request)))
        return render(request, "error.html", {"code": code, "message": t[key]}, status=status)

    @staticmethod
    def message(request: Request, key: str) -> str:
        return translator(pick_locale(request, default_locale(request)))[key]


def browser_for(services: Services) -> Browser:
    secure = services.settings.server.issuer.startswith("https://")
    return Browser(
        guard=CsrfGuard(services.settings.require_secret_key(), secure=secure),
        secure=secure,
        session_ttl=services.sessions.ttl,
    )
