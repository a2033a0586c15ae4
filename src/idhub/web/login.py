"""The login page (`GET/POST /login`) and the session cookie it sets.

The page is where /authorize sends a browser that needs to sign in; `return_to` brings it back
to the same authorization request afterwards. Only local `/authorize?...` paths are accepted as
`return_to`, so the page cannot be used as an open redirect.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import Actor
from idhub.core.identity import User
from idhub.core.sessions import COOKIE_NAME, SsoSession
from idhub.errors import AuthenticationFailed, DirectoryUnavailable
from idhub.web.csrf import CsrfGuard
from idhub.web.middleware import request_context
from idhub.web.templating import render

RETURN_PATHS = ("/authorize",)
MAX_RETURN_TO = 8000


def is_secure(services: Services) -> bool:
    return services.settings.server.issuer.startswith("https://")


def set_session_cookie(response: Response, services: Services, value: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=int(services.sessions.ttl),
        httponly=True,
        samesite="lax",
        secure=is_secure(services),
        path="/",
    )


def clear_session_cookie(response: Response, services: Services) -> None:
    response.delete_cookie(
        COOKIE_NAME, httponly=True, samesite="lax", secure=is_secure(services), path="/"
    )


def current_session(request: Request, services: Services) -> SsoSession | None:
    """The browser's active SSO session (blocking: call from a worker thread)."""
    return services.sessions.resolve(request.cookies.get(COOKIE_NAME))


def safe_return_to(value: str | None) -> str | None:
    """`value` if it is a local path idhub itself sends browsers back to, else None."""
    if not value or len(value) > MAX_RETURN_TO or "\\" in value:
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return None
    if parts.path not in RETURN_PATHS:
        return None
    return value


def csrf_guard(services: Services) -> CsrfGuard:
    return CsrfGuard(services.settings.require_secret_key(), secure=is_secure(services))


def routes(services: Services) -> list[BaseRoute]:
    guard = csrf_guard(services)

    def page(
        request: Request,
        *,
        return_to: str | None,
        username: str = "",
        error: str | None = None,
        status: int = 200,
        client_name: str | None = None,
    ) -> Response:
        token, new_cookie = guard.token(request)
        response = render(
            request,
            "login.html",
            {
                "csrf_token": token,
                "return_to": return_to or "",
                "username": username,
                "error": error,
                "client_name": client_name,
            },
            status=status,
        )
        guard.set_cookie(response, new_cookie)
        return response

    def client_name_for(return_to: str | None) -> str | None:
        if not return_to:
            return None
        client_id = parse_qs(urlsplit(return_to).query).get("client_id", [""])[0]
        client = services.clients.get(client_id) if client_id else None
        return (client.name or client.client_id) if client is not None else None

    async def login_get(request: Request) -> Response:
        return_to = safe_return_to(request.query_params.get("return_to"))
        hint = request.query_params.get("login_hint", "")[:200]
        if not return_to:
            session = await run_in_threadpool(current_session, request, services)
            user = (
                await run_in_threadpool(services.identity.get_user, session.user_id)
                if session is not None
                else None
            )
            if user is not None:
                return signed_in_page(request, user)
        name = await run_in_threadpool(client_name_for, return_to)
        return page(request, return_to=return_to, username=hint, client_name=name)

    def signed_in_page(request: Request, user: User) -> Response:
        token, new_cookie = guard.token(request)
        response = render(
            request,
            "signed_in.html",
            {
                "csrf_token": token,
                "username": user.username,
                "display_name": user.display_name or user.username,
            },
        )
        guard.set_cookie(response, new_cookie)
        return response

    async def login_post(request: Request) -> Response:
        form = await request.form()
        return_to = safe_return_to(_text(form.get("return_to")))
        username = _text(form.get("username"))[:200]
        password = _text(form.get("password"))
        if not guard.check(request, form):
            return page(
                request, return_to=return_to, username=username, error="form_expired", status=400
            )
        ctx = request_context(request)

        def sign_in() -> tuple[str, User]:
            user = services.authenticator.authenticate(username, password, ctx=ctx)
            previous = current_session(request, services)
            if previous is not None and previous.user_id != user.id:
                # Another person signs in on this browser: the previous person is logged out
                # everywhere this session reached, not silently replaced.
                services.logout.end_session(
                    previous.sid, reason="replaced", actor=Actor("user", user.sub), ctx=ctx
                )
                previous = None
            cookie, _session = services.sessions.start(
                user, amr=["pwd"], ctx=ctx, previous=previous
            )
            return cookie, user

        try:
            cookie, user = await run_in_threadpool(sign_in)
        except DirectoryUnavailable:
            return page(
                request,
                return_to=return_to,
                username=username,
                error="directory_unreachable",
                status=503,
            )
        except AuthenticationFailed:
            return page(
                request, return_to=return_to, username=username, error="login_failed", status=401
            )
        response: Response
        if return_to:
            response = RedirectResponse(return_to, status_code=303)
        else:
            response = signed_in_page(request, user)
        set_session_cookie(response, services, cookie)
        return response

    return [
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
    ]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
