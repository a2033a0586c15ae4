"""`/cas/*`: the CAS 3.0 server front over the sign-in core.

`/cas/login` parses the CAS request (`service`, `renew`, `gateway`, `method`), asks the
sign-in core (`core/signin.py`) and renders its answer in CAS's words: a redirect (or a POST
form) to the service with a ticket, the login page, the consent page, or for `gateway` a
redirect back without a ticket. An unknown service gets an error page and never a redirect.
The validation and proxy endpoints hand their parameters to `cas/server.py` and render the
1.0 text, XML or JSON answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.cas.attributes import consent_scopes
from idhub.cas.responses import (
    Failure,
    Validated,
    proxy_json,
    proxy_xml,
    validation_json,
    validation_text,
    validation_xml,
)
from idhub.cas.server import PROTOCOL, CasServer, ValidationRequest
from idhub.core.audit import RequestContext
from idhub.core.cas import CasService
from idhub.core.signin import (
    ConsentNeeded,
    LoginNeeded,
    Refused,
    SignedIn,
    SignInCore,
    SignInOutcome,
    SignInRequest,
)
from idhub.web.authorize import CONSENT_FIELD, TICKET_PARAM
from idhub.web.batching import Batcher
from idhub.web.browser import Browser, browser_for
from idhub.web.csrf import CSRF_FIELD
from idhub.web.middleware import request_context
from idhub.web.templating import render

LOGIN_PARAMS = ("service", "renew", "gateway", "method", TICKET_PARAM)
_NO_STORE = {"Cache-Control": "no-store"}


def check_flag(value: str | None) -> bool:
    """CAS flags are set by their presence (`renew=true`, or just `renew`)."""
    return value is not None and value.strip().lower() not in ("false", "0", "no", "off")


def sign_in_request(
    service: CasService, params: dict[str, str], fresh_since: float | None
) -> SignInRequest:
    """CAS's words in the sign-in core's: `renew` forces a sign-in and, as CAS 3.0 §2.1.1
    recommends, wins over `gateway`, which asks passively."""
    renew = check_flag(params.get("renew"))
    return SignInRequest(
        client_id=service.name,
        first_party=service.first_party,
        protocol=PROTOCOL,
        scopes=consent_scopes(service.attributes),
        force_login=renew,
        passive=check_flag(params.get("gateway")) and not renew,
        fresh_since=fresh_since,
    )


def with_ticket(url: str, ticket: str | None) -> str:
    if ticket is None:
        return url
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode({"ticket": ticket})
    return urlunsplit(parts._replace(query=query))


class CasLogin:
    def __init__(self, *, signin: SignInCore, cas: CasServer, browser: Browser) -> None:
        self._signin = signin
        self._cas = cas
        self._browser = browser

    async def get(self, request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if k in LOGIN_PARAMS}
        ctx = request_context(request)
        return await run_in_threadpool(self.handle, request, params, None, ctx)

    async def post(self, request: Request) -> Response:
        form = await request.form()
        params = {k: v for k, v in form.items() if k in LOGIN_PARAMS and isinstance(v, str)}
        answer = form.get(CONSENT_FIELD)
        if not isinstance(answer, str) or not self._browser.guard.check(request, form):
            return self._browser.error_page(request, "form_expired", "csrf")
        ctx = request_context(request)
        return await run_in_threadpool(self.handle, request, params, answer, ctx)

    def handle(
        self, request: Request, params: dict[str, str], consent: str | None, ctx: RequestContext
    ) -> Response:
        url = params.get("service")
        if url is None:
            # No service: the login page, or "you are signed in" (CAS 3.0 §2.1.1).
            return RedirectResponse("/login", status_code=303)
        service = self._cas.service_for(url)
        if service is None:
            return self._browser.error_page(request, "cas_unknown_service", "INVALID_SERVICE")
        wanted = sign_in_request(
            service, params, self._signin.fresh_since(params.get(TICKET_PARAM))
        )
        cookie = self._browser.session_cookie(request)
        outcome: SignInOutcome
        if consent is not None:
            allowed = consent == "allow"
            outcome = self._signin.answer_consent(cookie, wanted, allowed=allowed, ctx=ctx)
        else:
            outcome = self._signin.evaluate(cookie, wanted)
        return self.render(request, service, url, wanted, outcome, params, ctx)

    def render(
        self,
        request: Request,
        service: CasService,
        url: str,
        wanted: SignInRequest,
        outcome: SignInOutcome,
        params: dict[str, str],
        ctx: RequestContext,
    ) -> Response:
        if isinstance(outcome, SignedIn):
            fresh = (
                wanted.fresh_since is not None and outcome.session.auth_time >= wanted.fresh_since
            )
            ticket = self._cas.issue_service_ticket(
                service, url, session=outcome.session, user=outcome.user,
                from_new_login=fresh, ctx=ctx,
            )  # fmt: skip
            # Recorded only once a ticket is on its way: this service now takes part.
            self._signin.record_participant(outcome, wanted)
            return self.to_service(request, url, ticket, post=params.get("method") == "POST")
        if isinstance(outcome, Refused):
            if wanted.passive:
                # gateway: back to the service without a ticket (CAS 3.0 §2.1.1).
                return self.to_service(request, url, None, post=False)
            return self._browser.error_page(request, "cas_access_denied", outcome.error, status=403)
        if isinstance(outcome, ConsentNeeded):
            return self.consent_page(request, service, outcome, params)
        assert isinstance(outcome, LoginNeeded)
        keep = [(k, v) for k, v in params.items() if k != TICKET_PARAM]
        keep.append((TICKET_PARAM, self._signin.login_ticket()))
        return_to = "/cas/login?" + urlencode(keep)
        return RedirectResponse("/login?" + urlencode({"return_to": return_to}), status_code=303)

    def to_service(self, request: Request, url: str, ticket: str | None, *, post: bool) -> Response:
        if post and ticket is not None:
            context = {"action": url, "fields": [("ticket", ticket)]}
            return render(request, "cas_post.html", context)
        return RedirectResponse(with_ticket(url, ticket), status_code=302, headers=_NO_STORE)

    def consent_page(
        self, request: Request, service: CasService, who: ConsentNeeded, params: dict[str, str]
    ) -> Response:
        context = {
            "client_id": service.name,
            "client_name": service.display_name or service.name,
            "scopes": [s for s in consent_scopes(service.attributes) if s != "openid"],
            "username": who.user.username,
            "display_name": who.user.display_name or who.user.username,
            "params": [(k, v) for k, v in params.items() if k not in (CSRF_FIELD, CONSENT_FIELD)],
        }
        return self._browser.form_page(
            request, "consent.html", {**context, "form_action": "/cas/login"}
        )

    async def logout(self, request: Request) -> Response:
        url = request.query_params.get("service") or request.query_params.get("url")
        ctx = request_context(request)
        return await run_in_threadpool(self.sign_out, request, url, ctx)

    def sign_out(self, request: Request, url: str | None, ctx: RequestContext) -> Response:
        cookie = self._browser.session_cookie(request)
        current = self._signin.current(cookie, include_disabled=True)
        # Only a registered service is a place to go afterwards (no open redirect).
        service = self._cas.service_for(url)
        if current is not None:
            initiator = service.name if service is not None else None
            self._signin.sign_out(current, reason="cas_logout", ctx=ctx, initiator=initiator)
        response: Response
        if service is not None and url is not None:
            response = RedirectResponse(url, status_code=302, headers=_NO_STORE)
        else:
            response = render(request, "logout.html", {"done": True, "return_uri": None})
        self._browser.clear_session_cookie(response)
        return response


class CasValidation:
    """`/cas/validate`, `/cas/(p3/)serviceValidate`, `/cas/(p3/)proxyValidate`, `/cas/proxy`."""

    def __init__(self, cas: CasServer) -> None:
        self._cas = cas
        # The validations arriving while a batch runs go to the CAS server together: one
        # threadpool hop and one transaction for them all (docs/performance.md, CAS).
        self._validations: Batcher[
            tuple[ValidationRequest, RequestContext | None], Validated | Failure
        ] = Batcher(cas.validate_many)

    def endpoint(
        self, *, version: int, proxy_tickets: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        async def validate(request: Request) -> Response:
            q = request.query_params
            wanted = ValidationRequest(
                ticket=q.get("ticket"),
                service=q.get("service"),
                renew=check_flag(q.get("renew")),
                pgt_url=q.get("pgtUrl") if version >= 2 else None,
                proxy_tickets=proxy_tickets,
                attributes=version >= 3,
            )
            result = await self._validations.submit((wanted, request_context(request)))
            if version == 1:
                return Response(validation_text(result), media_type="text/plain", headers=_NO_STORE)
            if (q.get("format") or "").upper() == "JSON":
                return Response(validation_json(result), media_type="application/json",
                                headers=_NO_STORE)  # fmt: skip
            return Response(validation_xml(result), media_type="application/xml", headers=_NO_STORE)

        return validate

    async def proxy(self, request: Request) -> Response:
        q = request.query_params
        result = await run_in_threadpool(
            self._cas.proxy, q.get("pgt"), q.get("targetService"), ctx=request_context(request)
        )
        if (q.get("format") or "").upper() == "JSON":
            return Response(proxy_json(result), media_type="application/json", headers=_NO_STORE)
        return Response(proxy_xml(result), media_type="application/xml", headers=_NO_STORE)


def routes(services: Services) -> list[BaseRoute]:
    login = CasLogin(signin=services.signin, cas=services.cas, browser=browser_for(services))
    check = CasValidation(services.cas)
    validators = {
        "/cas/validate": check.endpoint(version=1, proxy_tickets=False),
        "/cas/serviceValidate": check.endpoint(version=2, proxy_tickets=False),
        "/cas/proxyValidate": check.endpoint(version=2, proxy_tickets=True),
        "/cas/p3/serviceValidate": check.endpoint(version=3, proxy_tickets=False),
        "/cas/p3/proxyValidate": check.endpoint(version=3, proxy_tickets=True),
    }
    return [
        Route("/cas/login", login.get, methods=["GET"]),
        Route("/cas/login", login.post, methods=["POST"]),
        Route("/cas/logout", login.logout, methods=["GET"]),
        *(Route(path, endpoint, methods=["GET"]) for path, endpoint in validators.items()),
        Route("/cas/proxy", check.proxy, methods=["GET"]),
    ]
