"""`/authorize` (GET and POST): the browser-facing half of the code flow.

The provider facade (`services.oidc`) validates the request and issues codes; this module
decides whether the browser's SSO session can be used (prompt, max_age, login_hint), sends it
to the login page when not, asks for consent where needed, and records which systems each
session signed into (for back-channel logout).

An unknown client or an unregistered redirect URI gets an error page and never a redirect
(RFC 6749 §4.1.2.1); every other error goes back to the validated redirect URI with `iss`
(RFC 9207).
"""

from __future__ import annotations

import hmac
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import Actor, EventType, RequestContext
from idhub.core.crypto import KeyedHasher
from idhub.core.identity import User
from idhub.core.sessions import COOKIE_NAME, SsoSession, decide_login
from idhub.oidc.messages import (
    AuthorizationErrorRedirect,
    AuthorizationPageError,
    AuthorizationRequest,
    OAuthRequestData,
)
from idhub.web.csrf import CSRF_FIELD
from idhub.web.i18n import pick_locale, translator
from idhub.web.login import csrf_guard
from idhub.web.middleware import request_context
from idhub.web.oauth import to_response
from idhub.web.templating import default_locale, render

# Set by this module on the way to the login page: "signed in at or after <ts>" (HMAC-signed),
# so coming back satisfies prompt=login / max_age without looping.
TICKET_PARAM = "idhub_login_after"
TICKET_TTL = 600
CONSENT_FIELD = "idhub_consent"
_OWN_FIELDS = (CSRF_FIELD, CONSENT_FIELD)


class LoginTickets:
    def __init__(self, services: Services) -> None:
        self._hasher = KeyedHasher(services.settings.require_secret_key(), "login-after")

    def issue(self, now: float) -> str:
        # Milliseconds: a session started earlier within the same second must not count.
        ts = str(int(now * 1000))
        return f"{ts}.{self._hasher.hash(ts)[:32]}"

    def since(self, ticket: str | None, now: float) -> float | None:
        """The moment the ticket names, if it is genuine and recent; else None."""
        if not ticket or "." not in ticket or len(ticket) > 80:
            return None
        ts, mac = ticket.split(".", 1)
        if not ts.isdigit() or not hmac.compare_digest(self._hasher.hash(ts)[:32], mac):
            return None
        issued = int(ts) / 1000
        return issued if 0 <= now - issued <= TICKET_TTL else None


def zip_pairs(multi: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(key, value) for key, values in multi.items() for value in values]


def routes(services: Services) -> list[BaseRoute]:
    guard = csrf_guard(services)
    tickets = LoginTickets(services)
    issuer = services.settings.server.issuer.rstrip("/")

    def page_error(request: Request, error: AuthorizationPageError) -> Response:
        t = translator(pick_locale(request, default_locale(request)))
        if error.error == "invalid_client":
            message = t["unknown_client"]
        elif "redirect" in error.description.lower():
            message = t["bad_redirect_uri"]
        else:
            message = f"{t['bad_request']} ({error.description})"
        return render(request, "error.html", {"code": error.error, "message": message}, status=400)

    def login_redirect(
        request: Request, req: AuthorizationRequest, params: list[tuple[str, str]]
    ) -> Response:
        keep = [(k, v) for k, v in params if k not in (*_OWN_FIELDS, TICKET_PARAM)]
        keep.append((TICKET_PARAM, tickets.issue(services.clock.now())))
        query: list[tuple[str, str]] = [("return_to", "/authorize?" + urlencode(keep))]
        if req.login_hint:
            query.append(("login_hint", req.login_hint))
        for tag in (req.ui_locales or "").split():
            # ui_locales (OIDC Core 3.1.2.1) picks the login page's language.
            if tag.lower().startswith(("zh", "en")):
                query.append(("lang", "zh-CN" if tag.lower().startswith("zh") else "en"))
                break
        return RedirectResponse("/login?" + urlencode(query), status_code=303)

    def consent_page(
        request: Request, req: AuthorizationRequest, user: User, params: list[tuple[str, str]]
    ) -> Response:
        token, new_cookie = guard.token(request)
        response = render(
            request,
            "consent.html",
            {
                "csrf_token": token,
                "client_id": req.client.client_id,
                "client_name": req.client.name or req.client.client_id,
                "scopes": list(req.scopes),
                "username": user.username,
                "display_name": user.display_name or user.username,
                "params": [(k, v) for k, v in params if k not in _OWN_FIELDS],
            },
        )
        guard.set_cookie(response, new_cookie)
        return response

    def issue_code(req: AuthorizationRequest, user: User, session: SsoSession) -> Response:
        data = services.oidc.authorize(
            req,
            user=user,
            sid=session.sid,
            auth_time=session.auth_time,
            amr=list(session.amr),
            acr=session.acr,
        )
        # Recorded only once a code is on its way: this client now takes part in the session.
        services.sessions.add_client(session.sid, req.client.client_id)
        return to_response(data)

    def handle(
        request: Request,
        params: list[tuple[str, str]],
        *,
        consent: str | None,
        csrf_ok: bool,
        ctx: RequestContext,
    ) -> Response:
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for key, value in params:
            if key in _OWN_FIELDS:
                continue
            single.setdefault(key, value)
            multi.setdefault(key, []).append(value)
        data = OAuthRequestData(
            method="GET",
            uri=f"{issuer}/authorize?{urlencode(list(zip_pairs(multi)))}",
            headers=dict(request.headers),
            params=single,
            multi=multi,
            ctx=ctx,
        )
        try:
            req: AuthorizationRequest = services.oidc.validate_authorization(data)
        except AuthorizationPageError as exc:
            return page_error(request, exc)
        except AuthorizationErrorRedirect as exc:
            return to_response(exc.response)

        now = services.clock.now()
        session = services.sessions.resolve(request.cookies.get(COOKIE_NAME))
        user = services.identity.get_user(session.user_id) if session is not None else None
        if consent is not None:
            if not csrf_ok:
                t = translator(pick_locale(request, default_locale(request)))
                return render(
                    request, "error.html", {"code": "csrf", "message": t["form_expired"]},
                    status=400,
                )  # fmt: skip
            if session is None or user is None or user.disabled:
                return login_redirect(request, req, params)
            allowed = consent == "allow"
            if allowed:
                services.session_store.grant(
                    user.id, req.client.client_id, req.scopes, services.clock.now()
                )
            services.audit.record(
                EventType.CONSENT_GRANTED,
                actor=Actor("user", user.sub),
                target=req.client.client_id,
                outcome="success" if allowed else "denied",
                details={"scope": req.scope, "decision": "allow" if allowed else "deny"},
                ctx=ctx,
            )
            if not allowed:
                return to_response(
                    services.oidc.error_redirect(req, "access_denied", "the user denied access")
                )
            return issue_code(req, user, session)

        decision = decide_login(
            session,
            user,
            prompt=req.prompt,
            max_age=req.max_age,
            login_hint=req.login_hint,
            fresh_since=tickets.since(single.get(TICKET_PARAM), now),
            now=now,
        )
        if decision.needs_login:
            if "none" in req.prompt:
                return to_response(
                    services.oidc.error_redirect(req, "login_required", "the user must sign in")
                )
            return login_redirect(request, req, params)
        assert session is not None and user is not None

        if not req.client.first_party or "consent" in req.prompt:
            granted = services.session_store.granted_scopes(user.id, req.client.client_id)
            if "consent" in req.prompt or not set(req.scopes) <= granted:
                if "none" in req.prompt:
                    return to_response(
                        services.oidc.error_redirect(
                            req, "consent_required", "the user must approve this application"
                        )
                    )
                return consent_page(request, req, user, params)
        return issue_code(req, user, session)

    async def authorize_get(request: Request) -> Response:
        params = list(request.query_params.multi_items())
        ctx = request_context(request)
        return await run_in_threadpool(
            handle, request, params, consent=None, csrf_ok=False, ctx=ctx
        )

    async def authorize_post(request: Request) -> Response:
        form = await request.form()
        params = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        consent = form.get(CONSENT_FIELD)
        consent_value = consent if isinstance(consent, str) and consent else None
        csrf_ok = guard.check(request, form) if consent_value is not None else False
        ctx = request_context(request)
        return await run_in_threadpool(
            handle, request, params, consent=consent_value, csrf_ok=csrf_ok, ctx=ctx
        )

    return [Route("/authorize", authorize_get, methods=["GET"]),
            Route("/authorize", authorize_post, methods=["POST"])]  # fmt: skip
