"""`/logout`: the OpenID Connect RP-Initiated Logout front (GET and POST).

What the request may do is planned in `oidc/end_session.py`; ending the session and telling
every system that took part is the sign-in core's. This module parses, asks and renders: the
confirmation page, the error page, or the redirect to the registered post-logout URI.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import RequestContext
from idhub.core.clients import ClientRegistry
from idhub.core.signin import SignedIn, SignInCore
from idhub.oidc.end_session import PARAMS, EndSessionError, HintDecoder, plan_end_session
from idhub.web.browser import Browser, browser_for
from idhub.web.middleware import request_context
from idhub.web.templating import render


def with_params(uri: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + params
    return urlunsplit(parts._replace(query=urlencode(query)))


class Logout:
    def __init__(
        self,
        *,
        signin: SignInCore,
        hints: HintDecoder,
        clients: ClientRegistry,
        browser: Browser,
    ) -> None:
        self._signin = signin
        self._hints = hints
        self._clients = clients
        self._browser = browser

    async def get(self, request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if k in PARAMS}
        ctx = request_context(request)
        return await run_in_threadpool(self.handle, request, params, confirmed=False, ctx=ctx)

    async def post(self, request: Request) -> Response:
        form = await request.form()
        params = {k: v for k, v in form.items() if k in PARAMS and isinstance(v, str)}
        wants = form.get("confirm") == "yes"
        if wants and not self._browser.guard.check(request, form):
            return self._browser.error_page(request, "form_expired", "csrf")
        ctx = request_context(request)
        return await run_in_threadpool(self.handle, request, params, confirmed=wants, ctx=ctx)

    def handle(
        self, request: Request, params: Mapping[str, str], *, confirmed: bool, ctx: RequestContext
    ) -> Response:
        cookie = self._browser.session_cookie(request)
        current = self._signin.current(cookie, include_disabled=True)
        try:
            plan = plan_end_session(
                params, current=current, confirmed=confirmed, hints=self._hints,
                clients=self._clients,
            )  # fmt: skip
        except EndSessionError as exc:
            return self._browser.error_page(request, exc.message_key, exc.code)
        if plan.confirm:
            assert current is not None
            return self.confirm_page(request, params, current)
        if current is not None:
            initiator = plan.client.client_id if plan.client else None
            self._signin.sign_out(current, reason=plan.reason, ctx=ctx, initiator=initiator)
        response: Response
        if plan.redirect_to is not None:
            extra = [("state", plan.state)] if plan.state else []
            response = RedirectResponse(with_params(plan.redirect_to, extra), status_code=303)
        else:
            response = render(request, "logout.html", {"done": True, "return_uri": None})
        self._browser.clear_session_cookie(response)
        return response

    def confirm_page(
        self, request: Request, params: Mapping[str, str], current: SignedIn
    ) -> Response:
        user = current.user
        context = {
            "done": False,
            "params": [(k, params[k]) for k in PARAMS if params.get(k)],
            "username": user.username,
            "display_name": user.display_name or user.username,
            "cancel_uri": None,
        }
        return self._browser.form_page(request, "logout.html", context)


def routes(services: Services) -> list[BaseRoute]:
    endpoint = Logout(
        signin=services.signin,
        hints=services.id_tokens,
        clients=services.clients,
        browser=browser_for(services),
    )
    return [
        Route("/logout", endpoint.get, methods=["GET"]),
        Route("/logout", endpoint.post, methods=["POST"]),
    ]
