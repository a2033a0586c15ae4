"""A minimal expense-reimbursement system that trusts idhub, in the shape a real one would take.

- every API call carries an idhub access token for audience `reimburse`, validated offline;
- the list of expense reports is filtered by the data scope idhub computes for the caller;
- approving asks the decision API about that one report;
- `/backchannel-logout` ends local sessions when the user signs out anywhere.

Run against `make run` (after `idhub client add reimburse-pdp --grant client_credentials
--scope authz --allowed-audience reimburse --allowed-audience idhub --json` for the PDP
credentials; the `reimburse` audience is what lets it ask about that domain):

    IDHUB=http://127.0.0.1:8000 PDP_SECRET=... python examples/reimburse_app.py
"""

from __future__ import annotations

import os
import sqlite3

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idhub.sdk import InvalidToken, LogoutTokenValidator, PdpClient, TokenValidator
from idhub.sdk.starlette import BearerAuthMiddleware

IDHUB = os.environ.get("IDHUB", "http://127.0.0.1:8000")
pdp = PdpClient(IDHUB, client_id="reimburse-pdp", client_secret=os.environ.get("PDP_SECRET", ""))
logout_tokens = LogoutTokenValidator(IDHUB, client_id="reimburse")
ended_sessions: set[str] = set()

db = sqlite3.connect(":memory:", check_same_thread=False)
db.execute("CREATE TABLE reports (id INTEGER PRIMARY KEY, owner TEXT, dept TEXT, amount REAL)")
db.executemany(
    "INSERT INTO reports (owner, dept, amount) VALUES (?, ?, ?)",
    [
        ("alice", "/总部/华东区/销售一部", 1280.0),
        ("bob", "/总部/华东区", 560.5),
        ("carol", "/总部/财务部/费用核算组", 88.0),
    ],
)


def list_reports(request: Request) -> JSONResponse:
    user = request.state.idhub_claims["preferred_username"]
    scope = pdp.scopes(user, "reimburse", "expense_report", "read")
    where, params = scope.sql_where(owner_column="owner", dept_column="dept", me=user)
    rows = db.execute(f"SELECT id, owner, dept, amount FROM reports WHERE {where}", params)  # noqa: S608
    names = ("id", "owner", "dept", "amount")
    return JSONResponse([dict(zip(names, r, strict=True)) for r in rows])


def approve(request: Request) -> JSONResponse:
    user = request.state.idhub_claims["preferred_username"]
    row = db.execute(
        "SELECT owner, dept FROM reports WHERE id = ?", (request.path_params["id"],)
    ).fetchone()
    if row is None:
        return JSONResponse({"error": "not_found"}, status_code=404)
    decision = pdp.check(user, "reimburse", "expense_report", "approve", owner=row[0], dept=row[1])
    if not decision.allowed:
        return JSONResponse({"error": "forbidden", "reason": decision.reason}, status_code=403)
    return JSONResponse({"approved": request.path_params["id"]})


async def backchannel_logout(request: Request) -> Response:
    form = await request.form()
    try:
        event = logout_tokens.validate(str(form.get("logout_token", "")))
    except InvalidToken:
        return Response(status_code=400)
    ended_sessions.add(event.sid or event.sub or "")
    return Response(status_code=200, headers={"Cache-Control": "no-store"})


app = Starlette(
    routes=[
        Route("/reports", list_reports),
        Route("/reports/{id:int}/approve", approve, methods=["POST"]),
        Route("/backchannel-logout", backchannel_logout, methods=["POST"]),
    ]
)
guarded = BearerAuthMiddleware(
    app,
    validator=TokenValidator.from_discovery(IDHUB, audience="reimburse"),
    exempt_paths={"/backchannel-logout"},
)

if __name__ == "__main__":
    uvicorn.run(guarded, host="127.0.0.1", port=8002)
