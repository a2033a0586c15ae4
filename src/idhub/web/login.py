"""The login page (`GET/POST /login`) and the session cookie it sets.

The page is where a front door sends a browser that needs to sign in; `return_to` brings it
back to the same request afterwards. Only local paths of idhub's own fronts are accepted as
`return_to`, so the page cannot be used as an open redirect. What signing in means (checking the
password, replacing another person's session on this browser, whether a second factor is
owed) is the sign-in core's; the second-factor step itself is in `web/second_factor.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.clients import ClientRegistry
from idhub.core.remembered_devices import DEVICE_COOKIE
from idhub.core.signin import PasswordSignIn, PasswordStep, SignedIn, SignInCore
from idhub.core.upstream import UpstreamProvider
from idhub.errors import AuthenticationFailed, DirectoryUnavailable, TooManyAttempts
from idhub.web.browser import Browser, browser_for
from idhub.web.middleware import request_context
from idhub.web.second_factor import (
    ReturnPathSystem,
    SecondFactorStep,
    return_path_system,
    second_factor_step,
)

RETURN_PATHS = ("/authorize", "/cas/login", "/saml/sso", "/account/security")
ACCOUNT_PAGE = "/account/security"
MAX_RETURN_TO = 8000
MAX_USERNAME = 200


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


class Login:
    def __init__(
        self,
        *,
        signin: SignInCore,
        clients: ClientRegistry,
        browser: Browser,
        steps: SecondFactorStep,
        systems: ReturnPathSystem,
        upstream: Sequence[UpstreamProvider] = (),
    ) -> None:
        self._upstream = tuple(upstream)
        self._signin = signin
        self._clients = clients
        self._browser = browser
        self._steps = steps
        self._systems = systems

    async def page(
        self,
        request: Request,
        *,
        return_to: str | None,
        username: str = "",
        error: str | None = None,
        status: int = 200,
        minutes: int | None = None,
    ) -> Response:
        """The login form; every rendering of it (first view, wrong password, throttled,
        expired form) names the system the person continues to, found from `return_to`."""
        context = {
            "return_to": return_to or "",
            "username": username,
            "error": error,
            "client_name": await run_in_threadpool(self.client_name_for, return_to),
            "minutes": minutes,
            "upstream": self.upstream_buttons(return_to),
        }
        return self._browser.form_page(request, "login.html", context, status=status)

    def upstream_buttons(self, return_to: str | None) -> list[dict[str, str]]:
        """ "钉钉扫码登录" / "企业微信登录" / another provider's: one per configured provider,
        each carrying the same return path as the form (web/upstream.py)."""
        query = f"?{urlencode({'return_to': return_to})}" if return_to else ""
        return [
            {"url": f"/login/upstream/{p.name}{query}", "kind": p.kind, "label": p.label}
            for p in self._upstream
        ]

    def signed_in_page(self, request: Request, signed_in: SignedIn) -> Response:
        """Signed in with nowhere to return to: who, since when, the systems this session
        entered, and the account page (a portal listing the company's systems may come)."""
        user, session = signed_in.user, signed_in.session
        context = {
            "username": user.username,
            "display_name": user.display_name or user.username,
            "department": user.department_path,
            "since": datetime.fromtimestamp(session.auth_time, UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "systems": [self.client_name_of(c) for c in session.clients],
            "account_url": ACCOUNT_PAGE,
        }
        return self._browser.form_page(request, "signed_in.html", context)

    def client_name_of(self, client_id: str) -> str:
        client = self._clients.get(client_id)
        return (client.name or client.client_id) if client is not None else client_id

    def client_name_for(self, return_to: str | None) -> str | None:
        """The "continue to ..." system: an OIDC client's display name, a CAS service's or
        SAML SP's registered name."""
        wanted = self._systems(return_to)
        if wanted.protocol != "oidc":
            return wanted.client_id
        client = self._clients.get(wanted.client_id) if wanted.client_id else None
        return (client.name or client.client_id) if client is not None else None

    async def get(self, request: Request) -> Response:
        return_to = safe_return_to(request.query_params.get("return_to"))
        hint = request.query_params.get("login_hint", "")[:MAX_USERNAME]
        if not return_to:
            cookie = self._browser.session_cookie(request)
            current = await run_in_threadpool(self._signin.current, cookie)
            if current is not None:
                return await run_in_threadpool(self.signed_in_page, request, current)
        elif request.query_params.get("switch") != "1":
            owed = await self.step_owed(request, return_to, hint)
            if owed is not None:
                return owed
        return await self.page(request, return_to=return_to, username=hint)

    async def post(self, request: Request) -> Response:
        form = await request.form()
        return_to = safe_return_to(_text(form.get("return_to")))
        username = _text(form.get("username"))[:MAX_USERNAME]
        password = _text(form.get("password"))
        if not self._browser.guard.check(request, form):
            return await self.page(
                request, return_to=return_to, username=username, error="form_expired", status=400
            )
        wanted = await run_in_threadpool(self._systems, return_to)
        try:
            result = await run_in_threadpool(
                self._signin.begin_password_sign_in,
                username,
                password,
                cookie=self._browser.session_cookie(request),
                ctx=request_context(request),
                device_cookie=request.cookies.get(DEVICE_COOKIE),
                client_id=wanted.client_id,
                acr_values=wanted.acr_values,
                protocol=wanted.protocol,
            )
        except DirectoryUnavailable:
            return await self.page(
                request,
                return_to=return_to,
                username=username,
                error="directory_unreachable",
                status=503,
            )
        except TooManyAttempts as exc:
            # The same page whatever the password was: the throttle refused before checking it.
            refused = await self.page(
                request, return_to=return_to, username=username, error="too_many_attempts",
                status=401, minutes=exc.minutes,
            )  # fmt: skip
            refused.headers["Retry-After"] = str(exc.minutes * 60)
            return refused
        except AuthenticationFailed:
            return await self.page(
                request, return_to=return_to, username=username, error="login_failed", status=401
            )
        if not isinstance(result, PasswordSignIn):
            return self._steps.answer(request, result, return_to=return_to)
        response: Response
        if return_to:
            response = RedirectResponse(return_to, status_code=303)
        else:
            signed_in = SignedIn(result.session, result.user)
            response = await run_in_threadpool(self.signed_in_page, request, signed_in)
        self._browser.set_session_cookie(response, result.cookie)
        return response

    async def step_owed(self, request: Request, return_to: str, hint: str) -> Response | None:
        """The browser's own session owes this request a second factor (step-up) or
        enrolment: that step instead of the password form, unless the request names
        someone else (`login_hint`)."""
        wanted = await run_in_threadpool(self._systems, return_to)
        step: PasswordStep | None = await run_in_threadpool(
            self._signin.login_page_step,
            self._browser.session_cookie(request),
            client_id=wanted.client_id,
            acr_values=wanted.acr_values,
            protocol=wanted.protocol,
        )
        if step is None:
            return None
        if hint and hint.strip().casefold() not in {
            step.user.username.casefold(),
            (step.user.email or "").casefold(),
        }:
            return None
        return self._steps.answer(request, step, return_to=return_to)


def routes(services: Services) -> list[BaseRoute]:
    steps = second_factor_step(services, check_return_to=safe_return_to)
    endpoint = Login(
        signin=services.signin,
        clients=services.clients,
        browser=browser_for(services),
        steps=steps,
        systems=return_path_system(services),
        upstream=services.upstream.providers(),
    )
    return [
        Route("/login", endpoint.get, methods=["GET"]),
        Route("/login", endpoint.post, methods=["POST"]),
        Route("/login/second-factor", steps.post, methods=["POST"]),
        Route("/login/passkey/options", steps.passkey_options, methods=["POST"]),
        Route("/login/passkey", steps.passkey_sign_in, methods=["POST"]),
    ]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
