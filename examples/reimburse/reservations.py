"""`POST /api/budget-reservations`: OA reserves budget for an approved request.

Only with an access token for `reimburse` that OA obtained by token exchange: `act.sub` names
OA as the caller and `sub` the approver on whose behalf it calls; idhub's decision API then says
whether that approver may reserve budget for that requester (a department's manager may, for
their department and below; nobody for themself). No shared secret between the systems.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from examples.reimburse.store import Reimbursements
from examples.shared.sso import Sso
from idhub.sdk import InvalidToken, PdpClient, PdpError
from idhub.sdk.identifiers import InvalidPath

CALLERS = frozenset({"oa"})
FIELDS = {
    "oa_request_id": int,
    "kind": str,
    "title": str,
    "owner": str,
    "owner_name": str,
    "dept": str,
    "amount_fen": int,
}


def _error(status: int, code: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = f'Bearer realm="reimburse", error="{code}"'
    return JSONResponse({"error": code, "error_description": description}, status, headers)


class ReservationApi:
    def __init__(self, sso: Sso, pdp: PdpClient, store: Reimbursements) -> None:
        self._sso = sso
        self._pdp = pdp
        self._store = store

    async def create(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "invalid_token", "a bearer token is required")
        try:
            claims = await run_in_threadpool(self._sso.tokens.validate, token.strip())
        except InvalidToken:
            return _error(401, "invalid_token", "the token is not valid for reimburse")
        act = claims.get("act")
        caller = act.get("sub") if isinstance(act, dict) else None
        if caller not in CALLERS or claims.get("sub") in (caller, claims.get("client_id")):
            # A system's own token, even passed through an exchange, names no person to ask for.
            return _error(403, "access_denied", "only OA, on a person's behalf, reserves budget")
        try:
            body = await request.json()
            fields = _fields(body)
        except ValueError as exc:
            return _error(400, "invalid_request", str(exc))
        return await run_in_threadpool(self._reserve, claims, str(caller), fields)

    def _reserve(self, claims: dict[str, Any], caller: str, fields: dict[str, Any]) -> Response:
        try:
            # `sub` is the approver (token exchange keeps the person); OA is only the actor.
            decision = self._pdp.check(
                claims, "reimburse", "budget", "reserve", owner=fields["owner"],
                dept=fields["dept"], resource_id=str(fields["oa_request_id"]),
            )  # fmt: skip
        except PdpError as exc:
            return _error(503, "temporarily_unavailable", f"idhub could not decide: {exc}")
        if not decision.allowed:
            return _error(403, "access_denied", f"may not reserve this budget: {decision.reason}")
        try:
            reservation = self._store.reserve(
                fields,
                reserved_by=str(claims.get("preferred_username") or claims["sub"]),
                via=caller,
            )
        except InvalidPath as exc:
            return _error(400, "invalid_request", str(exc))
        return JSONResponse({"id": reservation, "status": "reserved"}, status_code=201)


def _fields(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    fields: dict[str, Any] = {}
    for name, kind in FIELDS.items():
        value = body.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or value in ("", None):
            raise ValueError(f"{name} must be a {kind.__name__}")
        fields[name] = value
    if fields["amount_fen"] <= 0:
        raise ValueError("amount_fen must be positive")
    return fields
