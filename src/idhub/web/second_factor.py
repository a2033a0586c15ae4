"""The second-factor step of the login page (`POST /login/second-factor`), passkey sign-in
(`POST /login/passkey`, passwordless) and the WebAuthn options both ask for
(`POST /login/passkey/options`).

What is asked, and whether the answer counts, is the sign-in core's (`core/signin.py`); this
module renders the step, carries the signed pending login through the form and sets the
session and remembered-device cookies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from idhub.bootstrap import Services
from idhub.core.remembered_devices import DEVICE_COOKIE
from idhub.core.request_budget import PASSKEY_OPTIONS, PASSKEY_SIGN_IN, RequestBudget
from idhub.core.signin import (
    EnrolmentNeeded,
    PasswordSignIn,
    PasswordStep,
    SecondFactorNeeded,
    SignInCore,
)
from idhub.errors import AuthenticationFailed
from idhub.web.browser import Browser, browser_for
from idhub.web.errors import over_budget
from idhub.web.middleware import request_context
from idhub.web.templating import SECURITY_HEADERS

# The query parameter carrying a sealed pending AuthnRequest (web/saml.py uses it too).
SAML_PENDING_PARAM = "idhub_saml"
MAX_ANSWER = 64 * 1024
ACCOUNT_PAGE = "/account/security"


@dataclass(frozen=True)
class RequestedBy:
    """The system a login page's return path comes from, in the sign-in core's words."""

    client_id: str | None = None
    protocol: str = "oidc"
    acr_values: tuple[str, ...] = ()


class ReturnPathSystem:
    """Which system, and what assurance, a return path asks for, so the login page asks the
    core about the same request its front will: `/authorize` names its `client_id` (and
    `acr_values`); `/cas/login` its `service` URL, which `cas_service` maps to the registered
    service's name; `/saml/sso` its sealed pending AuthnRequest, which `saml_sp` opens to the
    SP's name. Anything unknown is no system (only the person's own rules count then)."""

    def __init__(
        self,
        *,
        cas_service: Callable[[str], str | None],
        saml_sp: Callable[[str], str | None],
    ) -> None:
        self._cas_service = cas_service
        self._saml_sp = saml_sp

    def __call__(self, return_to: str | None) -> RequestedBy:
        if not return_to:
            return RequestedBy()
        parts = urlsplit(return_to)
        query = parse_qs(parts.query)

        def first(name: str) -> str:
            return query.get(name, [""])[0]

        if parts.path == "/cas/login":
            service = first("service")
            return RequestedBy(self._cas_service(service) if service else None, "cas")
        if parts.path == "/saml/sso":
            pending = first(SAML_PENDING_PARAM)
            return RequestedBy(self._saml_sp(pending) if pending else None, "saml")
        return RequestedBy(first("client_id") or None, "oidc", tuple(first("acr_values").split()))


def return_path_system(services: Services) -> ReturnPathSystem:
    def cas_service(url: str) -> str | None:
        found = services.cas.service_for(url)
        return found.name if found is not None else None

    def saml_sp(token: str) -> str | None:
        pending = services.saml_pending.open(token, now=services.clock.now())
        return pending.sp if pending is not None else None

    return ReturnPathSystem(cas_service=cas_service, saml_sp=saml_sp)


def _text(value: object, limit: int = 2000) -> str:
    return value[:limit] if isinstance(value, str) else ""


class SecondFactorStep:
    def __init__(
        self,
        *,
        signin: SignInCore,
        browser: Browser,
        remember_days: float,
        check_return_to: Callable[[str | None], str | None],
        budget: RequestBudget,
    ) -> None:
        self._signin = signin
        self._budget = budget
        self._browser = browser
        self._remember_days = remember_days
        self._check_return_to = check_return_to

    # ------------------------------------------------------------------ rendering

    def page(
        self,
        request: Request,
        step: SecondFactorNeeded,
        *,
        return_to: str | None,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        context = {
            "pending": step.pending,
            "methods": list(step.methods),
            "return_to": return_to or "",
            "display_name": step.user.display_name or step.user.username,
            "remember_days": int(self._remember_days) if self._remember_days >= 1 else 0,
            "error": error,
        }
        return self._browser.form_page(request, "second_factor.html", context, status=status)

    def answer(self, request: Request, step: PasswordStep, *, return_to: str | None) -> Response:
        """What the login page answers after the password (or for a session owing a step)."""
        if isinstance(step, SecondFactorNeeded):
            return self.page(request, step, return_to=return_to)
        if isinstance(step, EnrolmentNeeded):
            query = {"required": "1", **({"return_to": return_to} if return_to else {})}
            response = RedirectResponse(f"{ACCOUNT_PAGE}?{urlencode(query)}", status_code=303)
            if step.sign_in is not None:
                self._browser.set_session_cookie(response, step.sign_in.cookie)
            return response
        return self.signed_in(step, return_to=return_to, request=request)

    def signed_in(
        self, result: PasswordSignIn, *, return_to: str | None, request: Request
    ) -> Response:
        target = return_to or "/login"
        response = RedirectResponse(target, status_code=303)
        self._browser.set_session_cookie(response, result.cookie)
        if result.device_cookie:
            response.set_cookie(
                DEVICE_COOKIE,
                result.device_cookie,
                max_age=int(self._remember_days * 86400),
                httponly=True,
                samesite="lax",
                secure=self._browser.secure,
                path="/login",
            )
        return response

    # ------------------------------------------------------------------ handlers

    async def post(self, request: Request) -> Response:
        form = await request.form()
        return_to = self._check_return_to(_text(form.get("return_to"), 8000))
        pending = _text(form.get("pending"))
        if not self._browser.guard.check(request, form):
            return self._browser.error_page(request, "form_expired", "csrf")
        try:
            result = await run_in_threadpool(
                self._signin.complete_second_factor,
                pending,
                method=_text(form.get("method"), 20),
                answer=_text(form.get("answer"), MAX_ANSWER),
                handle=_text(form.get("handle"), 100),
                remember=form.get("remember") == "1",
                cookie=self._browser.session_cookie(request),
                ctx=request_context(request),
            )
        except AuthenticationFailed as exc:
            return await self.failed(request, exc, pending=pending, return_to=return_to)
        return self.signed_in(result, return_to=return_to, request=request)

    async def failed(
        self, request: Request, exc: AuthenticationFailed, *, pending: str, return_to: str | None
    ) -> Response:
        if exc.reason == "pending_expired":
            return self._browser.error_page(request, "form_expired", "expired", status=400)
        step = await run_in_threadpool(self._signin.pending_step, pending)
        if step is None:
            return self._browser.error_page(request, "form_expired", "expired", status=400)
        return self.page(
            request, step, return_to=return_to, error="second_factor_failed", status=401
        )

    async def passkey_options(self, request: Request) -> Response:
        form = await request.form()
        if not self._browser.guard.check(request, form):
            return JSONResponse({"error": "csrf"}, status_code=400, headers=SECURITY_HEADERS)
        # Each answer stores a challenge row: asked before it is written.
        refused = self._budget.spend(PASSKEY_OPTIONS, request_context(request).client_ip)
        if refused is not None:
            return over_budget(request, refused)
        try:
            options = await run_in_threadpool(
                self._signin.passkey_options, _text(form.get("pending")) or None
            )
        except AuthenticationFailed:
            return JSONResponse({"error": "expired"}, status_code=400, headers=SECURITY_HEADERS)
        return JSONResponse(options, headers=SECURITY_HEADERS)

    async def passkey_sign_in(self, request: Request) -> Response:
        form = await request.form()
        return_to = self._check_return_to(_text(form.get("return_to"), 8000))
        if not self._browser.guard.check(request, form):
            return self._browser.error_page(request, "form_expired", "csrf")
        # Each failed passwordless attempt audits an `mfa.failed`, with nobody known yet.
        refused = self._budget.spend(PASSKEY_SIGN_IN, request_context(request).client_ip)
        if refused is not None:
            return over_budget(request, refused)
        try:
            result = await run_in_threadpool(
                self._signin.passkey_sign_in,
                _text(form.get("handle"), 100),
                _text(form.get("answer"), MAX_ANSWER),
                cookie=self._browser.session_cookie(request),
                ctx=request_context(request),
            )
        except AuthenticationFailed:
            return self._browser.error_page(request, "passkey_failed", "passkey", status=401)
        return self.signed_in(result, return_to=return_to, request=request)


def second_factor_step(
    services: Services, *, check_return_to: Callable[[str | None], str | None]
) -> SecondFactorStep:
    """Built by `web/login.py`, which serves the step under `/login/...`."""
    return SecondFactorStep(
        signin=services.signin,
        browser=browser_for(services),
        remember_days=services.settings.mfa.remember_device_days,
        check_return_to=check_return_to,
        budget=services.request_budget,
    )
