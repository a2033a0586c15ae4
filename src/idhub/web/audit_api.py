"""`GET /api/v1/audit`: the audit trail for admins, with the CLI's filters and cursor paging.

Every caller needs an idhub access token (`aud` idhub, scope `audit:read`, contract 3). Who may
then read depends on whom the token was issued to (`core.authz.audit_access`): a user reads if
idhub's own policy lets them (`idhub` / `audit_event` / `read`), a client only if it is listed
in `[server] admin_clients`. Scope and permission are both required, so a client merely
registered with the scope reads nothing, and a user's token from an admin client still reads
only what the user may.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.audit import OUTCOMES, AuditEvent, AuditFilter, check_event_types, parse_when
from idhub.core.authz.audit_access import READ_SCOPE, AuditReaders
from idhub.core.clock import Clock
from idhub.errors import InvalidInput, PolicyError
from idhub.web.bearer import BearerError, require_bearer
from idhub.web.middleware import request_context

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# Sequence numbers are BIGINT; times are epoch seconds a float column holds exactly.
MAX_SEQ = 2**63 - 1
MAX_TIME = 2.0**53
MAX_VALUE = 500
# Claims of a valid idhub access token carrying `audit:read`, or `BearerError`.
Authorise = Callable[[Request], Awaitable[dict[str, Any]]]
Search = Callable[..., list[AuditEvent]]


def _cursor(order: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{order}:{seq}".encode()).decode().rstrip("=")


def _read_cursor(value: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        order, _, seq = raw.partition(":")
        if order in ("asc", "desc") and seq.isdigit() and int(seq) <= MAX_SEQ:
            return order, int(seq)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidInput("cursor is not one this API returned")


def _query(request: Request, clock: Clock) -> tuple[AuditFilter, dict[str, Any]]:
    params = request.query_params
    known = {"type", "actor", "target", "outcome", "since", "until", "limit", "cursor", "order"}
    unknown = sorted(set(params.keys()) - known)
    if unknown:
        raise InvalidInput(
            f"unknown parameter {unknown[0][:50]!r} (known: {', '.join(sorted(known))})"
        )
    for name, value in params.multi_items():
        # No database takes a NUL in a string, and no filter needs a novel.
        if len(value) > MAX_VALUE or not value.isprintable():
            raise InvalidInput(f"{name} must be printable text of at most {MAX_VALUE} characters")
    types = [t.strip() for value in params.getlist("type") for t in value.split(",") if t.strip()]
    outcome = params.get("outcome") or None
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}")
    now = clock.now()

    def when(name: str) -> float | None:
        value = params.get(name)
        if not value:
            return None
        try:
            moment = parse_when(value, now=now)
        except (ValueError, OverflowError) as exc:
            raise InvalidInput(f"{name}: {exc}") from None
        if not -MAX_TIME <= moment <= MAX_TIME:  # also refuses nan and infinities
            raise InvalidInput(f"{name} is out of range")
        return moment

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


class AuditApi:
    """The handler of `GET /api/v1/audit`."""

    def __init__(
        self, *, authorise: Authorise, readers: AuditReaders, search: Search, clock: Clock
    ) -> None:
        self._authorise = authorise
        self._readers = readers
        self._search = search
        self._clock = clock

    def _refused(self, request: Request, claims: dict[str, Any]) -> JSONResponse | None:
        """None if the token's holder may read the trail, else the answer refusing it."""
        try:
            access = self._readers.access(
                client_id=str(claims.get("client_id", "")),
                sub=str(claims.get("sub", "")),
                ctx=request_context(request),
            )
        except PolicyError as exc:
            return _refuse(503, "policy_unavailable", exc.message)
        return None if access.allowed else _refuse(403, "access_denied", access.refusal)

    async def events(self, request: Request) -> Response:
        try:
            claims = await self._authorise(request)
        except BearerError as exc:
            return exc.response()
        refused = await run_in_threadpool(self._refused, request, claims)
        if refused is not None:
            return refused
        try:
            where, page = _query(request, self._clock)
        except InvalidInput as exc:
            # RFC 6750 3.1, as the decision API answers it.
            return _refuse(400, "invalid_request", exc.message)
        limit, order = page["limit"], page["order"]
        events = await run_in_threadpool(
            self._search,
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


def routes(services: Services) -> list[BaseRoute]:
    async def authorise(request: Request) -> dict[str, Any]:
        return await require_bearer(request, services, scope=READ_SCOPE)

    def search(where: AuditFilter, **page: Any) -> list[AuditEvent]:
        # The log is built at the first request, not with the app.
        return services.audit_log.search(where, **page)

    api = AuditApi(
        authorise=authorise, readers=services.audit_readers, search=search, clock=services.clock
    )
    return [Route("/api/v1/audit", api.events, methods=["GET"])]
