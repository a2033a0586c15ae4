"""The SAML 2.0 identity provider front: `/saml/metadata`, `/saml/sso` (HTTP-Redirect and
HTTP-POST bindings), `/saml/idp/{sp}` (IdP-initiated) and `/saml/slo`.

`idhub.saml` parses and checks the protocol and builds the signed messages; the sign-in core
(`services.signin`) decides session, `ForceAuthn`, `IsPassive` and consent. A request that cannot
be answered at an ACS the SP's metadata lists gets an error page, never a redirect.

A validated AuthnRequest travels through the login and consent pages as a sealed pending request
(`idhub_saml`), never parsed twice. A POST-bound AuthnRequest is answered with a redirect to that
GET form first, so the browser's SameSite=Lax session cookie is sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.claims import RoleSource
from idhub.core.failure_audit import FailureAudit
from idhub.core.request_budget import SAML_LOGOUT_NOOP, SAML_REJECTED
from idhub.core.signin import (
    ConsentNeeded,
    LoginNeeded,
    Refused,
    SignedIn,
    SignInCore,
    SignInOutcome,
    SignInRequest,
)
from idhub.errors import SamlRequestRejected
from idhub.saml.attributes import name_id_for, plan_attributes, released_names, session_index_for
from idhub.saml.idp import IdentityProvider, LogoutRequestInfo, SamlMessage
from idhub.saml.metadata import BINDING_POST, BINDING_REDIRECT
from idhub.saml.registry import ServiceProvider
from idhub.saml.requests import PendingRequest, PendingRequests
from idhub.web.authorize import CONSENT_FIELD, TICKET_PARAM
from idhub.web.browser import Browser, browser_for
from idhub.web.middleware import request_context
from idhub.web.second_factor import SAML_PENDING_PARAM
from idhub.web.templating import render

# The login page reads it too, to find which SP a return path comes from.
PENDING_PARAM = SAML_PENDING_PARAM
MAX_RELAY_STATE = 1000


class SamlFront:
    def __init__(
        self,
        *,
        signin: SignInCore,
        idp: IdentityProvider,
        pending: PendingRequests,
        browser: Browser,
        audit: Auditor,
        failures: FailureAudit,
        services: Services,
    ) -> None:
        self._signin = signin
        self._idp = idp
        self._pending = pending
        self._browser = browser
        self._audit = audit
        # A rejected request needs no session: its event is written within the per-address
        # budget (core/failure_audit.py); the answer to the browser is the same either way.
        self._failures = failures
        # Attribute sources (groups, roles) resolved at the first response, not at start-up.
        self._services = services

    # ------------------------------------------------------------------ endpoints

    async def metadata(self, request: Request) -> Response:
        xml = await run_in_threadpool(self._idp.metadata_xml)
        return Response(xml, media_type="application/samlmetadata+xml")

    async def sso_get(self, request: Request) -> Response:
        query = request.query_params
        ctx = request_context(request)
        if PENDING_PARAM in query:
            token, ticket = query.get(PENDING_PARAM), query.get(TICKET_PARAM)
            return await run_in_threadpool(self.resume, request, token, ticket, ctx)
        return await run_in_threadpool(
            self.start,
            request,
            BINDING_REDIRECT,
            query.get("SAMLRequest", ""),
            query.get("RelayState"),
            ctx,
        )

    async def sso_post(self, request: Request) -> Response:
        form = await request.form()
        ctx = request_context(request)
        answer = _text(form.get(CONSENT_FIELD))
        if answer:
            if not self._browser.guard.check(request, form):
                return self._browser.error_page(request, "form_expired", "csrf")
            token = _text(form.get(PENDING_PARAM))
            return await run_in_threadpool(self.consent_answered, request, token, answer, ctx)
        return await run_in_threadpool(
            self.start,
            request,
            BINDING_POST,
            _text(form.get("SAMLRequest")),
            _text(form.get("RelayState")) or None,
            ctx,
        )

    async def idp_initiated(self, request: Request) -> Response:
        name = request.path_params["sp"]
        relay = request.query_params.get("RelayState")
        ctx = request_context(request)
        return await run_in_threadpool(self.start_unsolicited, request, name, relay, ctx)

    async def slo_get(self, request: Request) -> Response:
        query = request.query_params
        ctx = request_context(request)
        return await run_in_threadpool(
            self.logout, request, BINDING_REDIRECT, query.get("SAMLRequest", ""),
            query.get("RelayState"), query.get("SAMLResponse"), ctx,
        )  # fmt: skip

    async def slo_post(self, request: Request) -> Response:
        form = await request.form()
        ctx = request_context(request)
        return await run_in_threadpool(
            self.logout, request, BINDING_POST, _text(form.get("SAMLRequest")),
            _text(form.get("RelayState")) or None, _text(form.get("SAMLResponse")), ctx,
        )  # fmt: skip

    # ------------------------------------------------------------------ single sign-on

    def start(
        self,
        request: Request,
        binding: str,
        saml_request: str,
        relay_state: str | None,
        ctx: RequestContext,
    ) -> Response:
        if not saml_request:
            return self.rejected(request, "no SAMLRequest", ctx)
        if relay_state is not None and len(relay_state) > MAX_RELAY_STATE:
            return self.rejected(request, "RelayState too long", ctx)
        try:
            pending = self._idp.read_authn_request(
                binding=binding,
                saml_request=saml_request,
                relay_state=relay_state,
                raw_query=request.url.query,
            )
        except SamlRequestRejected as exc:
            return self.rejected(request, exc.message, ctx)
        if binding == BINDING_POST:
            # Come back as a top-level GET so the SameSite=Lax session cookie is sent.
            token = self._pending.seal(pending)
            return RedirectResponse("/saml/sso?" + urlencode({PENDING_PARAM: token}), 303)
        return self.answer(request, pending, ticket=None, consent=None, ctx=ctx)

    def start_unsolicited(
        self, request: Request, name: str, relay_state: str | None, ctx: RequestContext
    ) -> Response:
        sp = self._idp_sp(name)
        if sp is None or (relay_state is not None and len(relay_state) > MAX_RELAY_STATE):
            return self.rejected(request, "unknown service provider", ctx)
        pending = self._idp.idp_initiated(sp, relay_state)
        return self.answer(request, pending, ticket=None, consent=None, ctx=ctx)

    def resume(
        self, request: Request, token: str | None, ticket: str | None, ctx: RequestContext
    ) -> Response:
        pending = self._pending.open(token, now=self._services.clock.now())
        if pending is None:
            return self._browser.error_page(request, "form_expired", "saml_request_expired")
        return self.answer(request, pending, ticket=ticket, consent=None, ctx=ctx)

    def consent_answered(
        self, request: Request, token: str, answer: str, ctx: RequestContext
    ) -> Response:
        pending = self._pending.open(token, now=self._services.clock.now())
        if pending is None:
            return self._browser.error_page(request, "form_expired", "saml_request_expired")
        return self.answer(request, pending, ticket=None, consent=answer, ctx=ctx)

    def answer(
        self,
        request: Request,
        pending: PendingRequest,
        *,
        ticket: str | None,
        consent: str | None,
        ctx: RequestContext,
    ) -> Response:
        sp = self._idp_sp(pending.sp)
        if sp is None:
            return self.rejected(request, "unknown service provider", ctx)
        wanted = sign_in_request(sp, pending, self._signin.fresh_since(ticket))
        cookie = self._browser.session_cookie(request)
        outcome: SignInOutcome
        if consent is not None:
            allowed = consent == "allow"
            outcome = self._signin.answer_consent(cookie, wanted, allowed=allowed, ctx=ctx)
        else:
            outcome = self._signin.evaluate(cookie, wanted)
        return self.render_outcome(request, sp, pending, wanted, outcome, ctx)

    def render_outcome(
        self,
        request: Request,
        sp: ServiceProvider,
        pending: PendingRequest,
        wanted: SignInRequest,
        outcome: SignInOutcome,
        ctx: RequestContext,
    ) -> Response:
        if isinstance(outcome, SignedIn):
            return self.issue(request, sp, pending, wanted, outcome, ctx)
        if isinstance(outcome, Refused):
            message = self._idp.refuse(pending, sp, passive=pending.is_passive)
            event = PendingEvent(
                EventType.SAML_REQUEST_REJECTED,
                actor=Actor("system"),
                target=sp.name,
                outcome="failure",
                details={"reason": outcome.error, "request_id": pending.request_id},
                ctx=ctx,
            )
            self._failures.record(SAML_REJECTED, event)
            return self.post_page(request, message)
        token = self._pending.seal(pending)
        if isinstance(outcome, ConsentNeeded):
            return self.consent_page(request, sp, outcome, token)
        assert isinstance(outcome, LoginNeeded)
        back = "/saml/sso?" + urlencode(
            {PENDING_PARAM: token, TICKET_PARAM: self._signin.login_ticket()}
        )
        return RedirectResponse("/login?" + urlencode({"return_to": back}), status_code=303)

    def issue(
        self,
        request: Request,
        sp: ServiceProvider,
        pending: PendingRequest,
        wanted: SignInRequest,
        signed_in: SignedIn,
        ctx: RequestContext,
    ) -> Response:
        opaque = self._services.saml_opaque
        try:
            message, assertion_id = self._idp.respond(
                pending,
                sp,
                name_id=name_id_for(sp, signed_in.user, opaque=opaque),
                attributes=self.attributes(sp, signed_in),
                auth_time=signed_in.session.auth_time,
                session_index=session_index_for(signed_in.session.sid, opaque=opaque),
            )
            # Signed above, outside any transaction; the ids, the participant and the event
            # commit together (core/transactions.py) before the response leaves.
            with self._services.unit_of_work.atomic() as tx:
                self._idp.claim(pending, sp, assertion_id)
                self._signin.record_participant(signed_in, wanted)
                tx.record(
                    EventType.SAML_RESPONSE_ISSUED,
                    actor=Actor("user", signed_in.user.sub),
                    target=sp.name,
                    details={
                        "sid": signed_in.session.sid,
                        "assertion_id": assertion_id,
                        "request_id": pending.request_id,
                        "acs_url": pending.acs_url,
                        "attributes": list(released_names(sp)),
                        "unsolicited": pending.request_id is None,
                    },
                    ctx=ctx,
                )
        except SamlRequestRejected as exc:
            return self.rejected(request, exc.message, ctx)
        return self.post_page(request, message)

    def attributes(self, sp: ServiceProvider, signed_in: SignedIn) -> dict[str, list[str]]:
        roles: RoleSource = self._services.authz
        return plan_attributes(
            sp,
            signed_in.user,
            groups=self._services.identity.user_groups,
            roles=roles,
            domains=self._services.settings.policy.domains,
        )

    # ------------------------------------------------------------------ single logout

    def logout(
        self,
        request: Request,
        binding: str,
        saml_request: str,
        relay_state: str | None,
        saml_response: str | None,
        ctx: RequestContext,
    ) -> Response:
        if not saml_request:
            # A LogoutResponse (or nothing): the person is signed out here already.
            return render(request, "logout.html", {"done": True})
        try:
            info = self._idp.read_logout_request(
                binding=binding,
                saml_request=saml_request,
                relay_state=relay_state,
                raw_query=request.url.query,
            )
        except SamlRequestRejected as exc:
            return self.rejected(request, exc.message, ctx)
        ended = self.end_session_for(request, info, ctx)
        message = self._idp.logout_response(info, success=True)
        event = PendingEvent(
            EventType.SAML_LOGOUT_ANSWERED,
            actor=Actor("system"),
            target=info.sp.name,
            details={"session_ended": ended, "binding": binding},
            ctx=ctx,
        )
        if ended:
            self._audit.record_many([event])
        else:
            # Nothing ended: a request anyone may send (or replay) for a known SP.
            self._failures.record(SAML_LOGOUT_NOOP, event)
        response = self.post_page(request, message)
        if ended:
            self._browser.clear_session_cookie(response)
        return response

    def end_session_for(
        self, request: Request, info: LogoutRequestInfo, ctx: RequestContext
    ) -> bool:
        """Ends the browser's session if it is the one the SP names (its NameID for this
        person); the other systems that took part are told by the sign-in core."""
        current = self._signin.current(self._browser.session_cookie(request), include_disabled=True)
        if current is None:
            return False
        expected = name_id_for(info.sp, current.user, opaque=self._services.saml_opaque)
        if expected.value != info.name_id:
            return False
        return self._signin.sign_out(current, reason="saml_logout", ctx=ctx, initiator=info.sp.name)

    # ------------------------------------------------------------------ pages

    def post_page(self, request: Request, message: SamlMessage) -> Response:
        if message.location is not None:
            return RedirectResponse(message.location, status_code=303)
        context: dict[str, Any] = {
            "url": message.url,
            "field": message.field,
            "value": message.value,
            "relay_state": message.relay_state,
        }
        return render(request, "saml_post.html", context)

    def consent_page(
        self, request: Request, sp: ServiceProvider, who: ConsentNeeded, token: str
    ) -> Response:
        context = {
            "client_name": sp.name,
            "entity_id": sp.entity_id,
            "attributes": list(released_names(sp)),
            "username": who.user.username,
            "display_name": who.user.display_name or who.user.username,
            "pending": token,
        }
        return self._browser.form_page(request, "saml_consent.html", context)

    def rejected(self, request: Request, reason: str, ctx: RequestContext) -> Response:
        event = PendingEvent(
            EventType.SAML_REQUEST_REJECTED,
            actor=Actor("system"),
            outcome="failure",
            details={"reason": reason[:200]},
            ctx=ctx,
        )
        self._failures.record(SAML_REJECTED, event)
        message = f"{self._browser.message(request, 'bad_request')} ({reason[:200]})"
        return render(
            request, "error.html", {"code": "saml_request_rejected", "message": message}, status=400
        )

    def _idp_sp(self, name: str) -> ServiceProvider | None:
        return self._services.saml_sps.get(name)


def sign_in_request(
    sp: ServiceProvider, pending: PendingRequest, fresh_since: float | None
) -> SignInRequest:
    """SAML's words in the sign-in core's: ForceAuthn, IsPassive, the attributes released."""
    return SignInRequest(
        client_id=sp.name,
        first_party=sp.first_party,
        protocol="saml",
        scopes=released_names(sp),
        force_login=pending.force_authn,
        passive=pending.is_passive,
        fresh_since=fresh_since,
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def routes(services: Services) -> list[BaseRoute]:
    front = SamlFront(
        signin=services.signin,
        idp=services.saml_idp,
        pending=services.saml_pending,
        browser=browser_for(services),
        audit=services.audit,
        failures=services.failure_audit,
        services=services,
    )
    return [
        Route("/saml/metadata", front.metadata, methods=["GET"]),
        Route("/saml/sso", front.sso_get, methods=["GET"]),
        Route("/saml/sso", front.sso_post, methods=["POST"]),
        Route("/saml/idp/{sp}", front.idp_initiated, methods=["GET"]),
        Route("/saml/slo", front.slo_get, methods=["GET"]),
        Route("/saml/slo", front.slo_post, methods=["POST"]),
    ]
