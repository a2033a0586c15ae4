"""`/account/security`: the signed-in person's own second factors.

Set up or remove an authenticator app (the QR code is drawn here as SVG; the secret never
leaves idhub otherwise), register or remove passkeys, get new recovery codes, and see and
forget remembered browsers. Someone who already has a second factor changes any of this only
with a session that presented one (the page sends them through the second-factor step first).
Every form carries the CSRF token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.assurance import ACR_MFA, AMR_HARDWARE_KEY, AMR_OTP
from idhub.core.audit import Actor
from idhub.core.mfa import SecondFactors
from idhub.core.passkeys import Passkeys
from idhub.core.remembered_devices import RememberedDevices
from idhub.core.signin import SignedIn, SignInCore
from idhub.errors import InvalidInput
from idhub.web.browser import Browser, browser_for
from idhub.web.middleware import request_context
from idhub.web.templating import SECURITY_HEADERS

PAGE = "/account/security"
MAX_ANSWER = 64 * 1024


def _text(value: object, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _secret_of(uri: str) -> str:
    """The secret for typing in by hand, in groups of four as authenticator apps show it."""
    secret = parse_qs(urlsplit(uri).query).get("secret", [""])[0]
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def qr_svg(uri: str) -> str:
    """The provisioning URI as an inline SVG QR code (no image service, no script)."""
    # Imported when someone first sets up an authenticator app (~1.5 MB a worker would
    # otherwise carry from start).
    import segno

    return str(segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff"))


class AccountSecurity:
    def __init__(
        self,
        *,
        signin: SignInCore,
        factors: SecondFactors,
        passkeys: Passkeys,
        devices: RememberedDevices,
        browser: Browser,
    ) -> None:
        self._signin = signin
        self._factors = factors
        self._passkeys = passkeys
        self._devices = devices
        self._browser = browser

    def context(self, who: SignedIn, request: Request, **extra: Any) -> dict[str, Any]:
        status = self._factors.status(who.user)
        pending_uri = self._factors.pending_totp_uri(who.user)
        return_to = _text(request.query_params.get("return_to"), 8000)
        return {
            "username": who.user.username,
            "display_name": who.user.display_name or who.user.username,
            "status": status,
            "devices": self._devices.devices(who.user),
            "totp_qr": qr_svg(pending_uri) if pending_uri else None,
            "totp_secret": _secret_of(pending_uri) if pending_uri else None,
            "action": PAGE + (f"?{request.url.query}" if request.url.query else ""),
            "required": request.query_params.get("required") == "1",
            "return_to": return_to if return_to.startswith("/authorize?") else "",
            "codes": None,
            "notice": None,
            "error": None,
            **extra,
        }

    def render(self, request: Request, who: SignedIn, **extra: Any) -> Response:
        context = self.context(who, request, **extra)
        return self._browser.form_page(request, "account_security.html", context)

    def gate(self, request: Request) -> tuple[SignedIn | None, Response | None]:
        """The person, or the redirect that comes first (sign in, or a second factor)."""
        who, owes = self._signin.security_page_access(self._browser.session_cookie(request))
        here = PAGE + (f"?{request.url.query}" if request.url.query else "")
        if who is None:
            return None, RedirectResponse(f"/login?{urlencode({'return_to': here})}", 303)
        if owes:
            back = f"{PAGE}?{urlencode({'acr_values': ACR_MFA})}"
            return None, RedirectResponse(f"/login?{urlencode({'return_to': back})}", 303)
        return who, None

    async def get(self, request: Request) -> Response:
        who, redirect = await run_in_threadpool(self.gate, request)
        if redirect is not None or who is None:
            return redirect or Response(status_code=400)
        return await run_in_threadpool(self.render, request, who)

    async def post(self, request: Request) -> Response:
        form = await request.form()
        if not self._browser.guard.check(request, form):
            return self._browser.error_page(request, "form_expired", "csrf")
        who, redirect = await run_in_threadpool(self.gate, request)
        if redirect is not None or who is None:
            return redirect or Response(status_code=400)
        return await run_in_threadpool(self.act, request, who, form)

    def act(self, request: Request, who: SignedIn, form: FormData) -> Response:
        action = _text(form.get("action"), 40)
        ctx = request_context(request)
        user = who.user
        if action == "totp_begin":
            try:
                self._factors.begin_totp(user)
            except InvalidInput:
                return self.render(request, who, error="mfa_totp_exists")
            return self.render(request, who)
        if action == "totp_confirm":
            if not self._factors.confirm_totp(user, _text(form.get("code"), 20), ctx=ctx):
                return self.render(request, who, error="mfa_code_wrong")
            return self.enrolled(request, AMR_OTP)
        if action == "passkey_register":
            return self.register_passkey(request, who, form)
        if action == "totp_remove":
            self._factors.remove_totp(user, ctx=ctx)
        elif action == "passkey_remove":
            number = _text(form.get("passkey"), 12)
            if number.isdigit():
                self._passkeys.remove(user, int(number), ctx=ctx)
        elif action == "recovery_new":
            return self.render(request, who, codes=self._factors.new_recovery_codes(user, ctx=ctx))
        elif action == "device_revoke":
            self._devices.revoke(
                user, _text(form.get("device"), 64), actor=Actor("user", user.sub), ctx=ctx
            )
        return self.render(request, who, notice="mfa_saved")

    def register_passkey(self, request: Request, who: SignedIn, form: FormData) -> Response:
        done = self._passkeys.finish_registration(
            who.user,
            _text(form.get("handle"), 100),
            _text(form.get("answer"), MAX_ANSWER),
            name=_text(form.get("name"), 100),
            ctx=request_context(request),
        )
        if not done:
            return self.render(request, who, error="passkey_failed")
        return self.enrolled(request, AMR_HARDWARE_KEY)

    def enrolled(self, request: Request, factor: str) -> Response:
        """A new factor was just proved: the session counts as signed in with it, and the
        first factor brings recovery codes, shown once."""
        ctx = request_context(request)
        renewed = self._signin.raise_after_enrolment(
            self._browser.session_cookie(request), factor, ctx=ctx
        )
        who = SignedIn(renewed.session, renewed.user)
        codes = None
        if self._factors.status(who.user).recovery_codes_left == 0:
            codes = self._factors.new_recovery_codes(who.user, ctx=ctx)
        response = self.render(request, who, codes=codes, notice="mfa_enrolled")
        self._browser.set_session_cookie(response, renewed.cookie)
        return response

    async def passkey_options(self, request: Request) -> Response:
        form = await request.form()
        if not self._browser.guard.check(request, form):
            return JSONResponse({"error": "csrf"}, status_code=400, headers=SECURITY_HEADERS)
        who, _ = await run_in_threadpool(self.gate, request)
        if who is None:
            return JSONResponse({"error": "login"}, status_code=403, headers=SECURITY_HEADERS)
        ceremony = await run_in_threadpool(self._passkeys.begin_registration, who.user)
        body = {"handle": ceremony.handle, "publicKey": ceremony.options}
        return JSONResponse(body, headers=SECURITY_HEADERS)


def routes(services: Services) -> list[BaseRoute]:
    page = AccountSecurity(
        signin=services.signin,
        factors=services.mfa,
        passkeys=services.passkeys,
        devices=services.remembered_devices,
        browser=browser_for(services),
    )
    return [
        Route(PAGE, page.get, methods=["GET"]),
        Route(PAGE, page.post, methods=["POST"]),
        Route(PAGE + "/passkey/options", page.passkey_options, methods=["POST"]),
    ]
