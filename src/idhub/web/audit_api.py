"""`GET /api/v1/audit`: the audit trail for admins, with the CLI's filters and cursor paging.

Every caller needs an idhub access token (`aud` idhub, scope `audit:read`, contract 3). Who may
then read depends on whom the token was issued to:

* a user (authorization code, refresh or token exchange: `sub` is a user's subject): idhub's
  own policy decides, as the decision API would for `user:<username>` in domain `idhub`, type
  `audit_event`, action `read`. Disabled and unknown users are denied. The decision goes to the
  audit trail like the decision API's (denials always, allows as `[audit] decisions` says);
* a client (client credentials: `sub` is the client_id): only a client listed in `[server]
  admin_clients`, the machine path that predates the policy.

Scope and permission are both required, so a client merely registered with the scope reads
nothing, and a user's token from an admin client still reads only what the user may.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import OUTCOMES, Actor, AuditFilter, check_event_types, parse_when
from idhub.core.authz.engine import Decision
from idhub.errors import InvalidInput, PolicyError
from idhub.web.bearer import BearerError, require_bearer
from idhub.web.middleware import request_context
from idhub.web.pdp_api import decide

SCOPE = "audit:read"
# What a user's token is checked for in idhub's own policy (policies/idhub.csv).
DOMAIN, RESOURCE_TYPE, ACTION = "idhub", "audit_event", "read"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def _cursor(order: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def _read_cursor(value: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        order, _, seq = raw.partition(":")
        if order in ("asc", "desc"):
            return order, int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidInput("cursor is not one this API returned")


def _query(request: Request, services: Services) -> tuple[AuditFilter, dict[str, Any]]:
    params = request.query_params
    known = {"type", "actor", "target", "outcome", "since", "until", "limit", "cursor", "order"}
    unknown = sorted(set(params.keys()) - known)
    if unknown:
        raise InvalidInput(f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})")
    types = [t.strip() for value in params.getlist("type") for t in value.split(",") if t.strip()]
    outcome = params.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}")
    now = services.clock.now()

    def when(name: str) -> float | None:
        value = params.get(name)
        if not value:
            return None
        try:
            return parse_when(value, now=now)
        except ValueError as exc:
            raise InvalidInput(f"{name}: {exc}") from None

    try:
        limit = int(params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise InvalidInput("limit must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidInput("order must be asc or desc")
    after: int | None = None
    before: int | None = None
    if params.get("cursor"):
        order, seq = _read_cursor(params["cursor"])
        after, before = (seq, None) if order == "asc" else (None, seq)
    where = AuditFilter(
        event_types=check_event_types(types),
        actor=params.get("actor") or None,
        target=params.get("target") or None,
        outcome=outcome,
        since=when("since"),
        until=when("until"),
    )
    return where, {"after_seq": after, "before_seq": before, "limit": limit, "order": order}


def _refuse(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def routes(services: Services) -> list[BaseRoute]:
    admins = frozenset(services.settings.server.admin_clients)

    def authorise(request: Request, claims: dict[str, Any]) -> JSONResponse | None:
        """None if the token's holder may read the trail, else the answer refusing it."""
        client_id = str(claims.get("client_id", ""))
        sub = str(claims.get("sub", ""))
        user = services.identity.get_user_by_sub(sub) if sub and sub != client_id else None
        if user is None:
            if client_id in admins:
                return None
            return _refuse(
                403,
                "access_denied",
                f"client {client_id!r} is not an admin client ([server] admin_clients)",
            )
        try:
            engine = services.authz.engine
        except PolicyError as exc:
            return _refuse(503, "policy_unavailable", exc.message)
        asked = {
            "user": "",
            "sub": sub,
            "domain": DOMAIN,
            "type": RESOURCE_TYPE,
            "action": ACTION,
            "owner": "",
            "dept": "",
            "resource_id": "",
        }
        decision: Decision
        if user.disabled:
            # The directory the engine holds may be a poll behind the identity store.
            decision, reason = Decision(False), "user is disabled"
        else:
            decision, reason, _ = decide(engine, asked)
        services.authz.record_decisions(
            [({**asked, "user": user.username, "client_id": client_id}, decision)],
            actor=Actor("user", user.sub),
            version=engine.version,
            ctx=request_context(request),
        )
        if decision.allowed:
            return None
        return _refuse(
            403,
            "access_denied",
            f"user {user.username!r} may not read the audit trail: {reason} "
            f"(policy domain {DOMAIN}, {RESOURCE_TYPE} {ACTION})",
        )

    async def audit_events(request: Request) -> Response:
        try:
            claims = await require_bearer(request, services, scope=SCOPE)
        except BearerError as exc:
            return exc.response()
        refused = await run_in_threadpool(authorise, request, claims)
        if refused is not None:
            return refused
        where, page = _query(request, services)
        limit, order = page["limit"], page["order"]
        events = await run_in_threadpool(
            services.audit_log.search,
            where,
            after_seq=page["after_seq"],
            before_seq=page["before_seq"],
            limit=limit + 1,
            newest_first=order == "desc",
        )
        more = len(events) > limit
        events = events[:limit]
        body = {
            "events": [e.to_dict() for e in events],
            "next_cursor": _cursor(order, events[-1].seq) if more else None,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [Route("/api/v1/audit", audit_events, methods=["GET"])]
