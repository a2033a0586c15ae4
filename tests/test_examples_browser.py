"""The whole job in a real browser (Debian chromium through Playwright) with the two example
systems of examples/: alice files a travel request in OA; bob, her department's manager,
approves it and OA reserves the budget in reimbursement through token exchange; alice opens
reimbursement with no second sign-in and files her expense report; each person sees exactly
the rows their data scope allows (and the SQL filter agrees with `check` on every row); bob
cannot approve his own report; carol (finance, with her second factor) pays alice's, which
writes off the reservation and files an archive record kate (档案管理员) and grace (审计) read;
signing out of OA signs alice out of reimbursement too.

The screenshots in docs/img/ that docs/tutorial.md shows are taken here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from idhub.sdk import PdpClient
from tests.conftest import LiveServer
from tests.examples_support import PASSWORDS, Examples, running_examples
from tests.sso_support import events
from tests.test_browser_login import CHROMIUM, CHROMIUM_ARGS
from tests.test_saml_slo import wait_for

pytestmark = [pytest.mark.browser]

SHOTS = Path(__file__).resolve().parents[1] / "docs" / "img"
# Reports filed straight into reimbursement's database (no OA request behind them), so the
# data scopes have rows outside 华东区 and one deep below it to tell apart.
OTHERS = (
    ("henry", "/总部/华南区", 30_000),
    ("carol", "/总部/财务部/费用核算组", 8_800),
    ("zoe", "/总部/华东区/销售一部/渠道组", 45_000),
)


@pytest.fixture
def examples(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str, tmp_path: Path, known_secrets
) -> Iterator[Examples]:
    with running_examples(make_live_server(sqlite_db_url), tmp_path, known_secrets) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


class Person:
    """One person's own browser (their own idhub SSO cookie), remembering every URL it visited."""

    def __init__(self, browser: Any, username: str, issuer: str) -> None:
        self.username = username
        self.issuer = issuer
        self.page = browser.new_context(
            locale="zh-CN", viewport={"width": 1200, "height": 700}
        ).new_page()
        self.visited: list[str] = []
        self.page.on("framenavigated", lambda frame: self.visited.append(frame.url))

    def open(self, url: str, *, totp: pyotp.TOTP | None = None) -> None:
        """Opens a system's page, signing in at idhub if it asks."""
        self.page.goto(url)
        if self.page.url.startswith(self.issuer + "/login"):
            self.page.fill("input[name=username]", self.username)
            self.page.fill("input[name=password]", PASSWORDS[self.username])
            self.page.click("button[type=submit]")
            self.page.wait_for_load_state()
            if totp is not None:
                self.page.fill("#totp-form input[name=answer]", totp.now())
                self.page.click("#totp-form button[type=submit]")
            self.page.wait_for_url(lambda now: now.startswith(url))
        assert self.page.locator("#who").count() == 1, self.page.content()[:800]

    def signed_in_at_idhub(self) -> int:
        return sum(1 for url in self.visited if url.startswith(self.issuer + "/login"))

    def rows(self, table: str) -> dict[int, str]:
        """Row id -> owner of the table's rows."""
        found = {}
        for row in self.page.locator(f"#{table} tbody tr[data-id]").all():
            found[int(row.get_attribute("data-id") or 0)] = row.get_attribute("data-owner") or ""
        return found

    def click_in_row(self, table: str, row_id: int, button: str) -> None:
        self.page.click(f"#{table} tr[data-id='{row_id}'] button.{button}")
        self.page.wait_for_load_state()

    def post_action(self, path: str) -> None:
        """Submits a form the page does not offer (as a crafted request would)."""
        self.page.evaluate(
            """path => { const f = document.createElement('form'); f.method = 'post';
                f.action = path; const c = document.querySelector('input[name=csrf]').cloneNode();
                f.appendChild(c); document.body.appendChild(f); f.submit(); }""",
            path,
        )
        self.page.wait_for_load_state()

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / name), full_page=True)


def file_request(person: Person, kind: str, title: str, amount: str) -> int:
    person.page.select_option("#new-request select[name=kind]", kind)
    person.page.fill("#new-request input[name=title]", title)
    person.page.fill("#new-request input[name=amount]", amount)
    person.page.click("#submit-request")
    person.page.wait_for_load_state()
    assert "已提交" in person.page.locator("p[role=status]").inner_text()
    return max(person.rows("requests"))


def file_report(person: Person, title: str, amount: str) -> int:
    person.page.fill("#new-report input[name=title]", title)
    person.page.fill("#new-report input[name=amount]", amount)
    person.page.click("#submit-report")
    person.page.wait_for_load_state()
    notice = person.page.locator("p[role=status]").inner_text()
    found = re.search(r"#(\d+)", notice)
    assert found, notice
    return int(found.group(1))


def test_the_whole_job_in_a_browser(examples: Examples, browser: Any, known_secrets) -> None:
    issuer, services = examples.idhub.url, examples.idhub.services
    oa, reimburse = examples.oa_url, examples.reimburse_url
    store = examples.reimburse.store
    carol_user = services.identity.get_user_by_username("carol")
    assert carol_user is not None
    enrolment = services.mfa.begin_totp(carol_user)
    carol_totp = pyotp.TOTP(enrolment.secret)
    known_secrets.add(enrolment.secret)
    assert services.mfa.confirm_totp(carol_user, carol_totp.at(services.clock.now() - 30), ctx=None)
    # The owners of the reports filed directly are people idhub knows (a report of someone it
    # does not know is never approvable: it might be the approver's own under another name).
    for owner, dept, _amount in OTHERS:
        if services.identity.get_user_by_username(owner) is None:
            services.identity.ensure_department(dept)
            services.identity.create_user(username=owner, display_name=owner, department_path=dept)
    services.authz.refresh_directory()

    # alice files a travel request in OA.
    alice = Person(browser, "alice", issuer)
    alice.open(oa + "/")
    assert "王小丽 (alice)" in alice.page.locator("#who").inner_text()
    assert alice.page.locator("#roles").inner_text().split() == ["employee"]
    travel = file_request(alice, "travel_request", "上海出差 客户拜访", "1,280.00")
    alice.shot("oa-alice-request.png")

    # bob approves it; OA reserves the budget on his behalf through token exchange.
    bob = Person(browser, "bob", issuer)
    bob.open(oa + "/")
    assert set(bob.page.locator("#roles").inner_text().split()) == {"dept_manager", "employee"}
    assert travel in bob.rows("requests")
    bob.click_in_row("requests", travel, "approve")
    assert "预算已预占" in bob.page.locator("p[role=status]").inner_text()
    bob.shot("oa-bob-approved.png")
    reservation = examples.oa.requests.get(travel)
    assert reservation is not None and reservation["status"] == "approved"
    reserved = store.reservation(reservation["reservation_id"])
    assert reserved is not None and reserved["via"] == "oa" and reserved["reserved_by"] == "bob"
    exchanged = events(services, "token.exchanged")
    assert [e["details"]["audience"] for e in exchanged] == ["reimburse"]
    _budget_api_refusals(examples, known_secrets)

    # bob files a purchase request of his own; dave (admin) approves it.
    purchase = file_request(bob, "purchase_request", "投影仪", "3,600")
    assert purchase in bob.rows("requests")  # his own: listed, but not his to approve
    assert bob.page.locator(f"#requests tr[data-id='{purchase}'] button.approve").count() == 0
    dave = Person(browser, "dave", issuer)
    dave.open(oa + "/")
    dave.click_in_row("requests", purchase, "approve")
    assert "预算已预占" in dave.page.locator("p[role=status]").inner_text()

    # alice opens reimbursement: no second sign-in, and files her report against the budget.
    before = alice.signed_in_at_idhub()
    alice.open(reimburse + "/")
    assert alice.signed_in_at_idhub() == before == 1
    alice_report = file_report(alice, "上海出差 差旅费", "1,180.50")
    alice.shot("reimburse-alice-report.png")

    # bob files his own report; he cannot approve it, even with a crafted form.
    bob.open(reimburse + "/")
    assert bob.signed_in_at_idhub() == 1
    bob_report = file_report(bob, "投影仪", "3,600.00")
    for owner, dept, amount in OTHERS:
        _file_directly(store, owner, dept, amount)
    bob.page.reload()
    assert bob.page.locator(f"#reports tr[data-id='{bob_report}'] button").count() == 0
    # zoe works in a team below 销售一部: bob manages it too.
    assert bob.page.locator(f"#reports tr[data-id='{bob_report + 3}'] button.approve").count() == 1
    bob.post_action(f"/reports/{bob_report}/approve")
    assert "不允许" in bob.page.locator("#error").inner_text()
    assert store.report(bob_report)["status"] == "submitted"  # type: ignore[index]
    # The app sends the report's actors (its segregation-of-duties steps) with every question.
    refused = [
        d
        for d in (e["details"] for e in events(services, "authz.decision"))
        if d["domain"] == "reimburse"
        and d["action"] == "approve"
        and d.get("resource_id") == str(bob_report)
    ]
    assert refused and all(d["actors"] == {"created_by": ["bob"]} for d in refused)
    assert not any(d["allowed"] for d in refused)
    bob.open(reimburse + "/")
    bob.click_in_row("reports", alice_report, "approve")
    assert "已审批" in bob.page.locator("p[role=status]").inner_text()

    # carol (finance; second factor) pays it: written off, archived.
    carol = Person(browser, "carol", issuer)
    carol.open(reimburse + "/", totp=carol_totp)
    carol.click_in_row("reports", alice_report, "pay")
    assert "已核销" in carol.page.locator("p[role=status]").inner_text()
    carol.shot("reimburse-carol-paid.png")
    paid = store.report(alice_report)
    assert paid is not None and paid["status"] == "paid" and paid["paid_by"] == "carol"
    written_off = store.reservation(paid["reservation_id"])
    assert written_off is not None and written_off["status"] == "written_off"
    assert written_off["written_off_fen"] == 118_050
    assert [a["report_id"] for a in store.archive()] == [alice_report]

    # Each sees exactly their data scope, and the SQL filter agrees with `check` on every row.
    grace = Person(browser, "grace", issuer)
    grace.open(reimburse + "/")
    everyone = {alice_report, bob_report} | set(range(bob_report + 1, bob_report + 4))
    expected = {
        alice: {alice_report},
        bob: {alice_report, bob_report, bob_report + 3},  # zoe is below 华东区 too
        carol: everyone,
        grace: everyone,
    }
    for person, rows in expected.items():
        person.open(reimburse + "/")
        assert set(person.rows("reports")) == rows, person.username
        if person is bob:
            bob.shot("reimburse-bob-scope.png")
    _sql_filter_agrees_with_check(examples, ["alice", "bob", "carol", "grace"])
    assert grace.page.locator("#reports button").count() == 0  # the auditor only reads
    grace.post_action(f"/reports/{bob_report + 3}/approve")
    assert "不允许" in grace.page.locator("#error").inner_text()
    grace.page.goto(reimburse + "/archive")
    assert grace.page.locator("#archive td.voucher").count() == 1

    # kate, the archive keeper, reads the archive record; alice may not.
    kate = Person(browser, "kate", issuer)
    kate.open(reimburse + "/archive")
    assert kate.page.locator("#archive tr[data-report]").get_attribute("data-report") == str(
        alice_report
    )
    kate.shot("reimburse-kate-archive.png")
    alice.page.goto(reimburse + "/archive")
    assert "无权查看" in alice.page.locator("#error").inner_text()

    # Signing out of OA signs alice out of reimbursement (back-channel logout).
    alice.open(oa + "/")
    alice.page.click("#sign-out")
    alice.page.wait_for_load_state()
    assert alice.page.url.startswith(oa + "/logged-out"), alice.page.url
    assert alice.page.locator("#signed-out").count() == 1
    alice_sub = services.identity.get_user_by_username("alice").sub  # type: ignore[union-attr]
    wait_for(lambda: not _signed_in(examples.reimburse, alice_sub))
    alice.page.goto(reimburse + "/")
    assert alice.page.url.startswith(issuer + "/login"), alice.page.url
    assert _signed_in(examples.reimburse, services.identity.get_user_by_username("bob").sub)  # type: ignore[union-attr]


def _file_directly(store: Any, owner: str, dept: str, amount_fen: int) -> int:
    reservation_id = store.reserve(
        {
            "oa_request_id": 900_000 + amount_fen,
            "kind": "travel_request",
            "title": f"{owner} 出差",
            "owner": owner,
            "owner_name": owner,
            "dept": dept,
            "amount_fen": amount_fen,
        },
        reserved_by="seed",
        via="test",
    )
    return int(
        store.file_report(store.reservation(reservation_id), title="差旅", amount_fen=amount_fen)
    )


def _sql_filter_agrees_with_check(examples: Examples, usernames: list[str]) -> None:
    settings = examples.reimburse.sso.settings
    pdp = PdpClient(settings.issuer, client_id="reimburse", client_secret=settings.client_secret)
    store = examples.reimburse.store
    everything = store.visible(pdp.scopes("dave", "reimburse", "expense_report", "read"))
    assert everything.total == len(everything.rows) >= 5
    for username in usernames:
        scope = pdp.scopes(username, "reimburse", "expense_report", "read")
        shown = {r["id"] for r in store.visible(scope).rows}
        decisions = pdp.check_many(
            [
                {"user": username, "domain": "reimburse", "type": "expense_report",
                 "action": "read", "owner": r["owner"], "dept": r["dept"]}
                for r in everything.rows
            ]
        )  # fmt: skip
        allowed = {r["id"] for r, d in zip(everything.rows, decisions, strict=True) if d.allowed}
        assert shown == allowed, username


EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def _budget_api_refusals(examples: Examples, known: Any) -> None:
    """The budget API takes only OA acting for a person, with a well-formed reservation: no
    token, a forged one, OA's own client-credentials token (no person), that token passed
    through an exchange, a malformed body, and bob reserving for himself are all refused."""
    issuer, oa_secret = examples.idhub.url, examples.secrets["oa"]
    api = examples.reimburse_url + "/api/budget-reservations"
    body = {"oa_request_id": 77, "kind": "travel_request", "title": "t", "owner": "alice",
            "owner_name": "王小丽", "dept": "/总部/华东区/销售一部", "amount_fen": 100}  # fmt: skip

    def post(token: str | None, payload: object = body) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(api, json=payload, headers=headers, timeout=10)

    def exchange(token: str) -> httpx.Response:
        data = {"grant_type": EXCHANGE, "subject_token": token, "subject_token_type": ACCESS}
        return httpx.post(
            f"{issuer}/token", data={**data, "resource": "reimburse"}, auth=("oa", oa_secret)
        )

    before = examples.reimburse.store.open_reservations("alice")
    assert post(None).status_code == 401
    assert post("not-a-jwt").json()["error"] == "invalid_token"
    service = httpx.post(
        f"{issuer}/token",
        data={"grant_type": "client_credentials", "resource": "reimburse"},
        auth=("oa", oa_secret),
    ).json()["access_token"]
    known.add(service)
    assert post(service).json()["error"] == "access_denied"
    passed_on = exchange(service)
    if passed_on.status_code == 200:
        known.add(passed_on.json()["access_token"])
        assert post(passed_on.json()["access_token"]).status_code == 403
    # bob's own access token at OA, exchanged as OA does.
    with examples.oa.sso.sessions._db.connect() as conn:
        (bob_at_oa,) = conn.execute("SELECT access_token FROM signins WHERE username = 'bob'")
    exchanged = exchange(bob_at_oa[0]).json()["access_token"]
    known.add(bob_at_oa[0], exchanged)
    assert post(exchanged, {**body, "amount_fen": "100"}).json()["error"] == "invalid_request"
    assert post(exchanged, [body]).status_code == 400
    own = {**body, "owner": "bob", "dept": "/总部/华东区"}
    assert post(exchanged, own).json()["error"] == "access_denied"
    assert examples.reimburse.store.open_reservations("alice") == before


def _signed_in(system: Any, sub: str) -> bool:
    with system.sso.sessions._db.connect() as conn:
        return conn.execute("SELECT 1 FROM signins WHERE sub = ?", (sub,)).fetchone() is not None
