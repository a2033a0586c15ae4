"""`/logout`: OpenID Connect RP-Initiated Logout 1.0 (GET and POST).

With a valid `id_token_hint` for the browser's session the session ends at once; without one
(or for another user) the person confirms on a page first (a CSRF-protected POST), so a link
on some web page cannot log people out. `post_logout_redirect_uri` must be registered for the
client named by the hint or by `client_id` (exact match); otherwise an error page is shown and
nothing redirects.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import Actor, RequestContext
from idhub.core.clients import Client
from idhub.core.sessions import COOKIE_NAME
from idhub.web.i18n import pick_locale, translator
from idhub.web.login import clear_session_cookie, csrf_guard
from idhub.web.middleware import request_context
from idhub.web.templating import default_locale, render

_PASSED_ON = ("id_token_hint", "post_logout_redirect_uri", "state", "client_id", "ui_locales")
MAX_PARAM = 8000


def with_params(uri: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))


def hint_audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list):
        return [a for a in aud if isinstance(a, str)]
    return []


def routes(services: Services) -> list[BaseRoute]:
    guard = csrf_guard(services)

    def error_page(request: Request, key: str, code: str) -> Response:
        t = translator(pick_locale(request, default_locale(request)))
        return render(request, "error.html", {"code": code, "message": t[key]}, status=400)

    def handle(
        request: Request, params: dict[str, str], *, confirmed: bool, ctx: RequestContext
    ) -> Response:
        if any(len(v) > MAX_PARAM for v in params.values()):
            return error_page(request, "bad_request", "invalid_request")
        hint = params.get("id_token_hint") or None
        claims = services.id_tokens.decode_id_token_hint(hint) if hint else None
        client_id = params.get("client_id") or None
        if claims is not None:
            audiences = hint_audiences(claims)
            if client_id is not None and client_id not in audiences:
                # OIDC RP-Initiated Logout §2: client_id must match the hint's audience.
                return error_page(request, "bad_request", "invalid_request")
            client_id = client_id or (audiences[0] if audiences else None)
        client: Client | None = services.clients.get(client_id) if client_id else None
        if client_id and client is None:
            return error_page(request, "unknown_client", "invalid_client")

        target = params.get("post_logout_redirect_uri") or None
        registered = (
            client is not None
            and target is not None
            and (client.allows_post_logout_redirect_uri(target))
        )
        if target is not None and not registered:
            return error_page(request, "bad_post_logout_uri", "invalid_request")

        session = services.sessions.resolve(request.cookies.get(COOKIE_NAME))
        user = services.identity.get_user(session.user_id) if session is not None else None
        hint_matches = claims is not None and (
            session is None
            or claims.get("sid") == session.sid
            or (user is not None and claims.get("sub") == user.sub)
        )
        if session is not None and not (confirmed or hint_matches):
            token, new_cookie = guard.token(request)
            confirm = render(
                request,
                "logout.html",
                {
                    "done": False,
                    "csrf_token": token,
                    "params": [(k, params[k]) for k in _PASSED_ON if params.get(k)],
                    "username": user.username if user else "",
                    "display_name": (user.display_name or user.username) if user else "",
                    "cancel_uri": None,
                },
            )
            guard.set_cookie(confirm, new_cookie)
            return confirm

        if session is not None:
            services.logout.end_session(
                session.sid,
                reason="rp_initiated" if claims is not None else "user_logout",
                actor=Actor("user", user.sub if user else None),
                ctx=ctx,
                initiator=client.client_id if client else None,
            )
        response: Response
        if target is not None:
            state = params.get("state")
            response = RedirectResponse(
                with_params(target, [("state", state)] if state else []), status_code=303
            )
        else:
            response = render(request, "logout.html", {"done": True, "return_uri": None})
        clear_session_cookie(response, services)
        return response

    async def logout_get(request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if k in _PASSED_ON}
        ctx = request_context(request)
        return await run_in_threadpool(handle, request, params, confirmed=False, ctx=ctx)

    async def logout_post(request: Request) -> Response:
        form = await request.form()
        params = {k: v for k, v in form.items() if k in _PASSED_ON and isinstance(v, str)}
        wants = form.get("confirm") == "yes"
        if wants and not guard.check(request, form):
            return error_page(request, "form_expired", "csrf")
        ctx = request_context(request)
        return await run_in_threadpool(handle, request, params, confirmed=wants, ctx=ctx)

    return [
        Route("/logout", logout_get, methods=["GET"]),
        Route("/logout", logout_post, methods=["POST"]),
    ]
