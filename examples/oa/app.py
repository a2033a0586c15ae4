"""The OA system: people file travel and purchase requests; the requester's department manager
approves them. Who that is comes from idhub, never from a table here: the list a person sees is
the data scope idhub returns for `read`, and the approve button appears where idhub's decision
API says `approve` is allowed (the manager relation: a department's manager holds dept_manager
on it and below; nobody approves their own request). On approval OA reserves the budget in
reimbursement on the approver's behalf (token exchange, `examples.oa.budget`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from examples.oa.budget import BudgetClient, BudgetError
from examples.oa.store import KINDS, SCHEMA, Requests
from examples.shared.app import system_app
from examples.shared.database import Database
from examples.shared.local_sessions import SCHEMA as SESSIONS_SCHEMA
from examples.shared.local_sessions import LocalSessions, SignedIn
from examples.shared.money import parse_fen, yuan
from examples.shared.pages import Pages
from examples.shared.settings import SystemSettings
from examples.shared.sso import Sso
from idhub.sdk import PdpClient, PdpError

DOMAIN = "oa"
TITLE = "OA 办公系统"


class Oa:
    def __init__(self, settings: SystemSettings, *, pdp: PdpClient | None = None) -> None:
        db = Database(settings.database, SCHEMA + SESSIONS_SCHEMA)
        self.requests = Requests(db)
        self.pages = Pages(Path(__file__).parent / "templates", settings=settings, title=TITLE)
        self.sso = Sso(settings, LocalSessions(db), pages=self.pages)
        self.pdp = pdp or PdpClient(
            settings.issuer, client_id=settings.client_id, client_secret=settings.client_secret
        )
        self.budget = BudgetClient(settings)

    def app(self) -> Starlette:
        return system_app(
            self.sso,
            [
                Route("/", self.home, methods=["GET"]),
                Route("/requests", self.create, methods=["POST"]),
                Route("/requests/{id:int}/approve", self.approve, methods=["POST"]),
            ],
        )

    def home(self, request: Request) -> Response:
        user = self.sso.require(request)
        try:
            scopes = {kind: self.pdp.scopes(user.claims, DOMAIN, kind, "read") for kind in KINDS}
            rows = self.requests.visible(scopes)
            waiting = [r for r in rows if r["status"] == "submitted"]
            questions = [_question(user, r, "approve") for r in waiting]
            answers = self.pdp.check_many(questions) if questions else []
        except PdpError as exc:
            message = f"idhub 无法决策 decision unavailable: {exc}"
            return self.pages.error(request, user, message, 503)
        approvable = {r["id"] for r, d in zip(waiting, answers, strict=True) if d.allowed}
        return self.pages.render(
            request, "home.html", user=user, rows=rows, approvable=approvable, kinds=KINDS,
            yuan=yuan,
        )  # fmt: skip

    async def create(self, request: Request) -> Response:
        user = self.sso.require(request)
        form = await request.form()
        self.sso.require_form(user, form)
        kind = str(form.get("kind", ""))
        title = str(form.get("title", "")).strip()
        if kind not in KINDS or not title or len(title) > 200:
            return self.pages.error(request, user, "请填写类型和事由 kind and title?", 400)
        try:
            amount = parse_fen(str(form.get("amount", "")))
        except ValueError as exc:
            return self.pages.error(request, user, str(exc), 400)
        return await run_in_threadpool(self._create, request, user, kind, title, amount)

    def _create(
        self, request: Request, user: SignedIn, kind: str, title: str, amount: int
    ) -> Response:
        decision = self.pdp.check(
            user.claims, DOMAIN, kind, "create", owner=user.username,
            dept=user.department,
        )  # fmt: skip
        if not decision.allowed:
            return self.pages.error(request, user, f"不允许 not allowed: {decision.reason}", 403)
        self.requests.create(
            kind=kind, owner=user.username, owner_name=user.name, dept=user.department,
            title=title, amount_fen=amount,
        )  # fmt: skip
        return _back(f"已提交 {KINDS[kind]} submitted: {title}")

    async def approve(self, request: Request) -> Response:
        user = self.sso.require(request)
        self.sso.require_form(user, await request.form())
        return await run_in_threadpool(self._approve, request, user, request.path_params["id"])

    def _approve(self, request: Request, user: SignedIn, request_id: int) -> Response:
        row = self.requests.get(request_id)
        if row is None:
            return self.pages.error(request, user, "没有这个申请 no such request", 404)
        decision = self.pdp.check(
            user.claims, DOMAIN, row["kind"], "approve", owner=row["owner"], dept=row["dept"],
            resource_id=str(row["id"]),
        )  # fmt: skip
        if not decision.allowed:
            message = f"不能审批 may not approve: {decision.reason}"
            return self.pages.error(request, user, message, 403)
        if row["status"] != "submitted":
            return self.pages.error(request, user, "已审批 already approved", 409)
        try:
            reservation = self.budget.reserve(
                user.access_token,
                {
                    "oa_request_id": row["id"],
                    "kind": row["kind"],
                    "title": row["title"],
                    "owner": row["owner"],
                    "owner_name": row["owner_name"],
                    "dept": row["dept"],
                    "amount_fen": row["amount_fen"],
                },
            )
        except BudgetError as exc:
            return self.pages.error(request, user, f"预算预占失败 budget not reserved: {exc}", 502)
        self.requests.approve(request_id, approver=user.username, reservation_id=reservation)
        return _back(f"已批准 approved; 预算已预占 budget reserved (#{reservation})")


def _question(user: SignedIn, row: sqlite3.Row, action: str) -> dict[str, object]:
    """One `check_many` entry; `user` is the person's validated access-token claims."""
    return {
        "user": user.claims,
        "domain": DOMAIN,
        "type": row["kind"],
        "action": action,
        "resource": {"owner": row["owner"], "dept": row["dept"], "id": str(row["id"])},
    }


def _back(notice: str) -> Response:
    from urllib.parse import quote

    return RedirectResponse(f"/?notice={quote(notice)}", status_code=303)


def create_app(settings: SystemSettings, *, pdp: PdpClient | None = None) -> Starlette:
    return Oa(settings, pdp=pdp).app()
