"""The reimbursement system: expense reports (报销单) against budget OA reserved (预算预占).

- The list is filtered in SQL by the data scope idhub returns for the signed-in person
  (employee: own; department manager: their department and below; finance reviewer and auditor:
  all), so it stays fast with a hundred thousand reports.
- Approving and paying ask idhub's decision API about that one report: approval needs the role,
  and nobody approves (or pays) their own report, whatever else allows it.
- Paying writes off the reservation (核销) and files an accounting-archive record (会计档案),
  which whoever may read `archive/voucher_archive` sees under /archive.
- `/api/budget-reservations` is for OA only, called with a token exchanged on the approver's
  behalf: `sub` is the approver, `act.sub` is `oa`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from examples.reimburse.reservations import ReservationApi
from examples.reimburse.store import SCHEMA, Conflict, Reimbursements
from examples.shared.app import system_app
from examples.shared.database import Database
from examples.shared.local_sessions import SCHEMA as SESSIONS_SCHEMA
from examples.shared.local_sessions import LocalSessions, SignedIn
from examples.shared.money import parse_fen, yuan
from examples.shared.pages import Pages
from examples.shared.settings import SystemSettings
from examples.shared.sso import Sso
from idhub.sdk import PdpClient, PdpError

DOMAIN = "reimburse"
TYPE = "expense_report"
TITLE = "费用报销系统"


class Reimburse:
    def __init__(self, settings: SystemSettings, *, pdp: PdpClient | None = None) -> None:
        db = Database(settings.database, SCHEMA + SESSIONS_SCHEMA)
        self.store = Reimbursements(db)
        self.pages = Pages(Path(__file__).parent / "templates", settings=settings, title=TITLE)
        self.sso = Sso(settings, LocalSessions(db), pages=self.pages)
        self.pdp = pdp or PdpClient(
            settings.issuer, client_id=settings.client_id, client_secret=settings.client_secret
        )
        self.reservations = ReservationApi(self.sso, self.pdp, self.store)

    def app(self) -> Starlette:
        return system_app(
            self.sso,
            [
                Route("/", self.home, methods=["GET"]),
                Route("/reports", self.create, methods=["POST"]),
                Route("/reports/{id:int}/{action:str}", self.decide, methods=["POST"]),
                Route("/archive", self.archive, methods=["GET"]),
                Route("/api/budget-reservations", self.reservations.create, methods=["POST"]),
            ],
        )

    def home(self, request: Request) -> Response:
        user = self.sso.require(request)
        try:
            scope = self.pdp.scopes(user.claims, DOMAIN, TYPE, "read")
            page = self.store.visible(scope)
            actions = self._actions(user, page.rows)
        except PdpError as exc:
            message = f"idhub 无法决策 decision unavailable: {exc}"
            return self.pages.error(request, user, message, 503)
        return self.pages.render(
            request, "home.html", user=user, page=page, actions=actions, yuan=yuan,
            reservations=self.store.open_reservations(user.username),
        )  # fmt: skip

    def _actions(self, user: SignedIn, rows: list[sqlite3.Row]) -> dict[int, str]:
        """The one button each row gets, where idhub allows it: approve or pay."""
        wanted = [(r, {"submitted": "approve", "approved": "pay"}.get(r["status"])) for r in rows]
        asked = [(r, action) for r, action in wanted if action is not None]
        if not asked:
            return {}
        answers = self.pdp.check_many([_question(user, r, a) for r, a in asked if a])
        return {r["id"]: a for (r, a), d in zip(asked, answers, strict=True) if d.allowed and a}

    async def create(self, request: Request) -> Response:
        user = self.sso.require(request)
        form = await request.form()
        self.sso.require_form(user, form)
        title = str(form.get("title", "")).strip()
        try:
            reservation_id = int(str(form.get("reservation", "")))
            amount = parse_fen(str(form.get("amount", "")))
        except ValueError as exc:
            return self.pages.error(request, user, f"请选择预算并填写金额 {exc}", 400)
        if not title or len(title) > 200:
            return self.pages.error(request, user, "请填写事由 a title is required", 400)
        return await run_in_threadpool(self._create, request, user, reservation_id, title, amount)

    def _create(
        self, request: Request, user: SignedIn, reservation_id: int, title: str, amount: int
    ) -> Response:
        reservation = self.store.reservation(reservation_id)
        if reservation is None or reservation["owner"] != user.username:
            return self.pages.error(request, user, "没有这笔预算 no such budget of yours", 404)
        decision = self.pdp.check(
            user.claims, DOMAIN, TYPE, "create", owner=reservation["owner"],
            dept=reservation["dept"],
        )  # fmt: skip
        if not decision.allowed:
            return self.pages.error(request, user, f"不允许 not allowed: {decision.reason}", 403)
        try:
            report_id = self.store.file_report(reservation, title=title, amount_fen=amount)
        except Conflict as exc:
            return self.pages.error(request, user, str(exc), 409)
        return _back(f"报销单 #{report_id} 已提交 submitted")

    async def decide(self, request: Request) -> Response:
        user = self.sso.require(request)
        self.sso.require_form(user, await request.form())
        action = request.path_params["action"]
        report_id = request.path_params["id"]
        if action not in ("approve", "pay"):
            return self.pages.error(request, user, "没有这个操作 no such action", 404)
        return await run_in_threadpool(self._decide, request, user, report_id, action)

    def _decide(self, request: Request, user: SignedIn, report_id: int, action: str) -> Response:
        report = self.store.report(report_id)
        if report is None:
            return self.pages.error(request, user, "没有这张报销单 no such report", 404)
        decision = self.pdp.check(
            user.claims, DOMAIN, TYPE, action, owner=report["owner"], dept=report["dept"],
            resource_id=str(report["id"]), actors=_actors(report),
        )  # fmt: skip
        if not decision.allowed:
            return self.pages.error(request, user, f"不允许 not allowed: {decision.reason}", 403)
        try:
            if action == "approve":
                self.store.approve(report_id, approver=user.username)
                return _back(f"报销单 #{report_id} 已审批 approved")
            voucher = self.store.pay(report_id, payer=user.username)
        except Conflict as exc:
            return self.pages.error(request, user, str(exc), 409)
        return _back(f"报销单 #{report_id} 已支付 paid; 预算已核销 written off; 凭证 {voucher}")

    def archive(self, request: Request) -> Response:
        user = self.sso.require(request)
        decision = self.pdp.check(user.claims, "archive", "voucher_archive", "read")
        if not decision.allowed:
            return self.pages.error(
                request, user, f"无权查看会计档案 may not read the archive: {decision.reason}", 403
            )
        return self.pages.render(
            request, "archive.html", user=user, records=self.store.archive(), yuan=yuan
        )


def _question(user: SignedIn, report: sqlite3.Row, action: str) -> dict[str, Any]:
    """One `check_many` entry; `user` is the person's validated access-token claims."""
    return {
        "user": user.claims,
        "domain": DOMAIN,
        "type": TYPE,
        "action": action,
        "resource": {"owner": report["owner"], "dept": report["dept"], "id": str(report["id"])},
        "actors": _actors(report),
    }


def _actors(report: sqlite3.Row) -> dict[str, str]:
    """Who already acted on the report, so idhub's segregation-of-duties rule for its steps
    (policies/sod.yaml, expense-report-steps) refuses a second step by the same person."""
    actors = {"created_by": str(report["owner"])}
    for step in ("approved_by", "paid_by"):
        if report[step]:
            actors[step] = str(report[step])
    return actors


def _back(notice: str) -> Response:
    return RedirectResponse(f"/?notice={quote(notice)}", status_code=303)


def create_app(settings: SystemSettings, *, pdp: PdpClient | None = None) -> Starlette:
    return Reimburse(settings, pdp=pdp).app()
