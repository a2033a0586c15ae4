"""`/authorize` (GET and POST): the OpenID Connect front over the sign-in core.

The provider (`oidc/server.py`) validates the request and issues codes; the sign-in core
(`core/signin.py`) decides whether the browser's session may be used, whether to ask for
consent, and records which systems each session signed into. This module only translates: the
OIDC request into a `SignInRequest`, and the core's answer into a redirect or a page.

An unknown client or an unregistered redirect URI gets an error page and never a redirect
(RFC 6749 §4.1.2.1); every other error goes back to the validated redirect URI with `iss`
(RFC 9207).
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import RequestContext
from idhub.core.signin import (
    ConsentNeeded,
    LoginNeeded,
    Refused,
    SignedIn,
    SignInCore,
    SignInOutcome,
    SignInRequest,
)
from idhub.oidc.messages import (
    AuthorizationErrorRedirect,
    AuthorizationPageError,
    AuthorizationRequest,
    OAuthRequestData,
)
from idhub.oidc.server import Provider
from idhub.web.browser import Browser, browser_for
from idhub.web.csrf import CSRF_FIELD
from idhub.web.middleware import request_context
from idhub.web.oauth import to_response
from idhub.web.templating import render

# Set on the way to the login page (a login ticket, see core/login_tickets.py), so coming back
# satisfies prompt=login / max_age without looping.
TICKET_PARAM = "idhub_login_after"
CONSENT_FIELD = "idhub_consent"
_OWN_FIELDS = (CSRF_FIELD, CONSENT_FIELD)
Params = list[tuple[str, str]]


def zip_pairs(multi: dict[str, list[str]]) -> Params:
    return [(key, value) for key, values in multi.items() for value in values]


def sign_in_request(
    req: AuthorizationRequest, fresh_since: float | None, *, acr_values: str | None = None
) -> SignInRequest:
    """OIDC's words in the sign-in core's: prompt, max_age, login_hint and acr_values (OIDC
    Core 3.1.2.1; the core decides whether the session's `acr` satisfies them)."""
    return SignInRequest(
        client_id=req.client.client_id,
        first_party=req.client.first_party,
        protocol="oidc",
        scopes=req.scopes,
        force_login="login" in req.prompt,
        force_consent="consent" in req.prompt,
        passive="none" in req.prompt,
        max_age=req.max_age,
        login_hint=req.login_hint,
        fresh_since=fresh_since,
        acr_values=tuple((acr_values or "").split()[:10]),
    )


class Authorize:
    def __init__(
        self, *, signin: SignInCore, provider: Provider, browser: Browser, issuer: str
    ) -> None:
        self._signin = signin
        self._provider = provider
        self._browser = browser
        self._issuer = issuer.rstrip("/")

    async def get(self, request: Request) -> Response:
        params = list(request.query_params.multi_items())
        ctx = request_context(request)
        return await run_in_threadpool(
            self.handle, request, params, consent=None, csrf_ok=False, ctx=ctx
        )

    async def post(self, request: Request) -> Response:
        form = await request.form()
        params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        answer = form.get(CONSENT_FIELD)
        consent = answer if isinstance(answer, str) and answer else None
        csrf_ok = consent is not None and self._browser.guard.check(request, form)
        ctx = request_context(request)
        return await run_in_threadpool(
            self.handle, request, params, consent=consent, csrf_ok=csrf_ok, ctx=ctx
        )

    def handle(
        self,
        request: Request,
        params: Params,
        *,
        consent: str | None,
        csrf_ok: bool,
        ctx: RequestContext,
    ) -> Response:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for key, value in params:
            if key not in _OWN_FIELDS:
                single.setdefault(key, value)
                multi.setdefault(key, []).append(value)
        data = OAuthRequestData(
            method="GET",
            uri=f"{self._issuer}/authorize?{urlencode(zip_pairs(multi))}",
            headers=dict(request.headers),
            params=single,
            multi=multi,
            ctx=ctx,
        )
        try:
            req = self._provider.validate_authorization(data)
        except AuthorizationPageError as exc:
            return self.page_error(request, exc)
        except AuthorizationErrorRedirect as exc:
            return to_response(exc.response)
        fresh_since = self._signin.fresh_since(single.get(TICKET_PARAM))
        wanted = sign_in_request(req, fresh_since, acr_values=single.get("acr_values"))
        cookie = self._browser.session_cookie(request)
        outcome: SignInOutcome
        if consent is not None:
            if not csrf_ok:
                return self._browser.error_page(request, "form_expired", "csrf")
            allowed = consent == "allow"
            outcome = self._signin.answer_consent(cookie, wanted, allowed=allowed, ctx=ctx)
        else:
            outcome = self._signin.evaluate(cookie, wanted)
        return self.render(request, req, wanted, outcome, params)

    def render(
        self,
        request: Request,
        req: AuthorizationRequest,
        wanted: SignInRequest,
        outcome: SignInOutcome,
        params: Params,
    ) -> Response:
        if isinstance(outcome, SignedIn):
            data = self._provider.authorize(
                req,
                user=outcome.user,
                sid=outcome.session.sid,
                auth_time=outcome.session.auth_time,
                amr=list(outcome.session.amr),
                acr=outcome.session.acr,
            )
            # Recorded only once a code is on its way: this client now takes part.
            self._signin.record_participant(outcome, wanted)
            return to_response(data)
        if isinstance(outcome, Refused):
            redirect = self._provider.error_redirect(req, outcome.error, outcome.description)
            return to_response(redirect)
        if isinstance(outcome, ConsentNeeded):
            return self.consent_page(request, req, outcome, params)
        assert isinstance(outcome, LoginNeeded)
        return self.login_redirect(req, params)

    def login_redirect(self, req: AuthorizationRequest, params: Params) -> Response:
        keep = [(k, v) for k, v in params if k not in (*_OWN_FIELDS, TICKET_PARAM)]
        keep.append((TICKET_PARAM, self._signin.login_ticket()))
        query: Params = [("return_to", "/authorize?" + urlencode(keep))]
        if req.login_hint:
            query.append(("login_hint", req.login_hint))
        for tag in (req.ui_locales or "").split():
            # ui_locales (OIDC Core 3.1.2.1) picks the login page's language.
            if tag.lower().startswith(("zh", "en")):
                query.append(("lang", "zh-CN" if tag.lower().startswith("zh") else "en"))
                break
        return RedirectResponse("/login?" + urlencode(query), status_code=303)

    def consent_page(
        self, request: Request, req: AuthorizationRequest, who: ConsentNeeded, params: Params
    ) -> Response:
        context = {
            "client_id": req.client.client_id,
            "client_name": req.client.name or req.client.client_id,
            "scopes": list(req.scopes),
            "username": who.user.username,
            "display_name": who.user.display_name or who.user.username,
            "params": [(k, v) for k, v in params if k not in _OWN_FIELDS],
        }
        return self._browser.form_page(
            request, "consent.html", {**context, "form_action": "/authorize"}
        )

    def page_error(self, request: Request, error: AuthorizationPageError) -> Response:
        if error.error == "invalid_client":
            message = self._browser.message(request, "unknown_client")
        elif "redirect" in error.description.lower():
            message = self._browser.message(request, "bad_redirect_uri")
        else:
            message = f"{self._browser.message(request, 'bad_request')} ({error.description})"
        return render(request, "error.html", {"code": error.error, "message": message}, status=400)


def routes(services: Services) -> list[BaseRoute]:
    endpoint = Authorize(
        signin=services.signin,
        provider=services.oidc,
        browser=browser_for(services),
        issuer=services.settings.server.issuer,
    )
    return [Route("/authorize", endpoint.get, methods=["GET"]),
            Route("/authorize", endpoint.post, methods=["POST"])]  # fmt: skip
