"""Sign in through an upstream provider: `GET /login/upstream/{name}` sends the browser to the
provider (DingTalk's QR code page, WeCom's, another OpenID Connect IdP) and
`GET /login/upstream/{name}/callback` is where it comes back. The flow and every decision are
core/upstream_flow.py's; this module parses, calls and renders. The callback URL is built from
the configured issuer, never from the request's Host header, so it is always the one
registered with the provider. A failure is a translated page with its reason code, never a
500.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.remembered_devices import DEVICE_COOKIE
from idhub.core.request_budget import UPSTREAM_CALLBACK, UPSTREAM_START, RequestBudget
from idhub.core.upstream import UpstreamFailed
from idhub.core.upstream_flow import STATE_COOKIE, SystemAsking, UpstreamDone, UpstreamSignIn
from idhub.web.browser import Browser, browser_for
from idhub.web.errors import over_budget
from idhub.web.login import safe_return_to
from idhub.web.middleware import request_context
from idhub.web.second_factor import (
    ReturnPathSystem,
    SecondFactorStep,
    return_path_system,
    second_factor_step,
)

COOKIE_PATH = "/login/upstream"
MAX_PARAM = 2000
# What the callback reads from the query (anything else the provider adds is ignored).
# `iss` (RFC 9207) lets an OpenID Connect provider's callback be checked against its issuer.
CALLBACK_PARAMS = ("state", "code", "authCode", "appid", "error", "error_description", "iss")
# Reason codes the person can do something about get their own sentence; the rest share one.
_MESSAGES = {
    "state_missing": "upstream_state",
    "state_foreign": "upstream_state",
    "state_unknown": "upstream_state",
    "state_provider": "upstream_state",
    "code_missing": "upstream_cancelled",
    "code_refused": "upstream_code_refused",
    "unknown_user": "upstream_unknown_user",
    "ambiguous_user": "upstream_unknown_user",
    "user_disabled": "upstream_user_disabled",
    "user_locked": "upstream_user_disabled",
    "not_member": "upstream_not_member",
    "upstream_unavailable": "upstream_unavailable",
    "unknown_provider": "upstream_unknown_provider",
}
_STATUS = {"upstream_unavailable": 502, "unknown_provider": 404}


class UpstreamPages:
    def __init__(
        self,
        *,
        flow: UpstreamSignIn,
        browser: Browser,
        steps: SecondFactorStep,
        systems: ReturnPathSystem,
        issuer: str,
        budget: RequestBudget,
    ) -> None:
        self._flow = flow
        self._budget = budget
        self._browser = browser
        self._steps = steps
        self._systems = systems
        self._issuer = issuer.rstrip("/")

    def callback_url(self, name: str) -> str:
        return f"{self._issuer}{COOKIE_PATH}/{name}/callback"

    async def start(self, request: Request) -> Response:
        name = request.path_params["name"]
        return_to = safe_return_to(request.query_params.get("return_to"))
        ctx = request_context(request)
        # Asked before the flow stores its state row and audit event, never after.
        refused = self._budget.spend(UPSTREAM_START, ctx.client_ip)
        if refused is not None:
            return over_budget(request, refused)
        try:
            started = await run_in_threadpool(
                self._flow.begin,
                name,
                redirect_uri=self.callback_url(name),
                return_to=return_to,
                ctx=ctx,
            )
        except UpstreamFailed as exc:
            return self.failed(request, exc)
        response = RedirectResponse(started.url, status_code=303)
        response.set_cookie(
            STATE_COOKIE,
            started.cookie_after(request.cookies.get(STATE_COOKIE)),
            max_age=int(self._flow.ttl),
            httponly=True,
            # Lax: the provider sends the browser back with a top-level GET, which carries it.
            samesite="lax",
            secure=self._browser.secure,
            path=COOKIE_PATH,
        )
        return response

    async def callback(self, request: Request) -> Response:
        name = request.path_params["name"]
        params = {
            key: value[:MAX_PARAM]
            for key in CALLBACK_PARAMS
            if (value := request.query_params.get(key)) is not None
        }
        # A failed callback audits a `login.failed`: a flood of made-up states is bounded too.
        # The state cookie is kept, so the same callback may be retried after Retry-After.
        refused = self._budget.spend(UPSTREAM_CALLBACK, request_context(request).client_ip)
        if refused is not None:
            return over_budget(request, refused)
        try:
            done = await run_in_threadpool(self._complete, request, name, params)
        except UpstreamFailed as exc:
            response = self.failed(request, exc)
        else:
            response = self._steps.answer(request, done.step, return_to=done.return_to)
        # The state is spent (or was never this browser's): its binding goes either way, and
        # the sign-ins other tabs started stay.
        left = self._flow.cookie_after_callback(
            request.cookies.get(STATE_COOKIE), params.get("state")
        )
        if left is None:
            response.delete_cookie(
                STATE_COOKIE,
                httponly=True,
                samesite="lax",
                secure=self._browser.secure,
                path=COOKIE_PATH,
            )
        else:
            response.set_cookie(
                STATE_COOKIE,
                left,
                max_age=int(self._flow.ttl),
                httponly=True,
                samesite="lax",
                secure=self._browser.secure,
                path=COOKIE_PATH,
            )
        return response

    def _complete(self, request: Request, name: str, params: dict[str, str]) -> UpstreamDone:
        return self._flow.complete(
            name,
            redirect_uri=self.callback_url(name),
            params=params,
            state_cookie=request.cookies.get(STATE_COOKIE),
            session_cookie=self._browser.session_cookie(request),
            device_cookie=request.cookies.get(DEVICE_COOKIE),
            ctx=request_context(request),
            system_for=self._system_for,
        )

    def _system_for(self, return_to: str | None) -> SystemAsking:
        """The system behind the return path the flow stored: whether a second factor is owed
        depends on it, as after a password."""
        wanted = self._systems(return_to)
        return SystemAsking(
            client_id=wanted.client_id,
            acr_values=tuple(wanted.acr_values),
            protocol=wanted.protocol,
        )

    def failed(self, request: Request, exc: UpstreamFailed) -> Response:
        key = _MESSAGES.get(exc.code, "upstream_failed")
        return self._browser.error_page(request, key, exc.code, status=_STATUS.get(exc.code, 400))


def routes(services: Services) -> list[BaseRoute]:
    pages = UpstreamPages(
        flow=services.upstream,
        browser=browser_for(services),
        steps=second_factor_step(services, check_return_to=safe_return_to),
        systems=return_path_system(services),
        issuer=services.settings.server.issuer,
        budget=services.request_budget,
    )
    return [
        Route("/login/upstream/{name}", pages.start, methods=["GET"]),
        Route("/login/upstream/{name}/callback", pages.callback, methods=["GET"]),
    ]
