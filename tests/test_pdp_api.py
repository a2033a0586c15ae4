"""The decision API end to end: a real uvicorn serving idhub, a real client-credentials token
from /token, the shipped policy, and the demo company in SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.core.audit import EventType
from tests.conftest import REPO, LiveServer
from tests.oidc_support import RP, decode, issue_code, pkce_pair, prepare, web_client

NO_WATCH = "[policy]\nwatch = false\n"
SALES1 = "/总部/华东区/销售一部"


@dataclass
class Api:
    live: LiveServer
    token: str
    admin_token: str

    def post(self, path: str, body: object, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.post(self.live.url + path, json=body, headers=headers, timeout=10)


def seed_company(services: Services) -> None:
    """The demo company (see src/idhub/demo.py) plus erin and a disabled ivan."""
    people = {
        "alice": SALES1,
        "bob": "/总部/华东区",
        "carol": "/总部/财务部/费用核算组",
        "dave": "/总部/信息技术部",
        "erin": "/总部/华东区/销售二部",
        "ivan": SALES1,
    }
    ident = services.identity
    ids = {}
    for name, dept in people.items():
        ids[name] = ident.create_user(username=name, department_path=dept).id
    ident.set_department_manager("/总部/华东区", ids["bob"])
    ident.set_group_members(ident.ensure_group("财务审核组").id, [ids["carol"]])
    ident.set_group_members(ident.ensure_group("系统管理员").id, [ids["dave"]])
    ident.set_disabled(ids["ivan"], True, reason="left")


def client_token(live: LiveServer, client_id: str, scope: str, resource: str = "idhub") -> str:
    _, secret = live.services.clients.register(
        client_id, grant_types=["client_credentials"], scope=scope
    )
    response = httpx.post(
        live.url + "/token",
        data={"grant_type": "client_credentials", "resource": resource, "scope": scope},
        auth=(client_id, secret or ""),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def api(make_live_server: Callable[..., LiveServer], db_url: str) -> Api:
    live = make_live_server(db_url, toml=NO_WATCH)
    prepare(live.services)
    seed_company(live.services)
    # What the background poll does every few seconds, done now.
    assert live.services.authz.refresh_directory()
    return Api(
        live,
        client_token(live, "reimburse", "authz"),
        client_token(live, "pdp-admin", "authz authz:admin"),
    )


def decisions(live: LiveServer) -> list[dict[str, object]]:
    with live.services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.event_type == EventType.AUTHZ_DECISION.value)
        ).all()
    return [{**row._mapping, "details": json.loads(row.details)} for row in rows]


def test_single_and_batch_decisions(api: Api) -> None:
    version = api.live.services.authz.version
    one = api.post(
        "/api/v1/authz/check",
        {
            "user": "bob",
            "domain": "reimburse",
            "type": "expense_report",
            "action": "approve",
            "resource": {"id": "789", "owner": "alice", "dept": SALES1},
        },
    )
    assert one.status_code == 200, one.text
    assert one.json() == {
        "allowed": True,
        "reason": "allowed by reimburse.csv:13",
        "policy_version": version,
    }

    alice_sub = api.live.services.identity.get_user_by_username("alice").sub  # type: ignore[union-attr]
    batch = [
        # bob approves alice's report; not his own (deny beats allow); not outside 华东区
        {
            "user": "bob",
            "type": "expense_report",
            "action": "approve",
            "owner": "alice",
            "dept": SALES1,
        },
        {
            "user": "bob",
            "type": "expense_report",
            "action": "approve",
            "owner": "bob",
            "dept": "/总部/华东区",
            "resource_id": 790,
        },
        {
            "user": "bob",
            "type": "expense_report",
            "action": "approve",
            "owner": "x",
            "dept": "/总部/财务部",
        },
        # alice, named by her OIDC subject, submits her own report but not erin's
        {"sub": alice_sub, "type": "expense_report", "action": "submit", "owner": "alice"},
        {"sub": alice_sub, "type": "expense_report", "action": "submit", "owner": "erin"},
        # carol (财务审核组) reviews anything
        {"user": "carol", "type": "expense_report", "action": "review", "owner": "erin"},
        {"user": "ivan", "type": "expense_report", "action": "read", "owner": "ivan"},
        {"user": "nobody", "type": "expense_report", "action": "read"},
    ]
    response = api.post("/api/v1/authz/check", {"requests": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["policy_version"] == version
    assert [r["allowed"] for r in body["results"]] == [
        True,
        False,
        False,
        True,
        False,
        True,
        False,
        False,
    ]
    assert body["results"][1]["reason"].startswith("denied by reimburse.csv:")
    assert body["results"][2]["reason"] == "no rule matched"
    assert body["results"][6]["reason"] == "user is disabled"
    assert body["results"][7]["reason"] == "unknown user"

    # Every denial is in the audit trail, attributed to the calling system, with the rule.
    recorded = decisions(api.live)
    denied = [e for e in recorded if e["outcome"] == "denied"]
    assert len(denied) == 5
    assert {e["actor_id"] for e in recorded} == {"reimburse"}
    own = next(e for e in denied if e["details"].get("owner") == "bob")
    assert own["details"]["resource_id"] == "790"
    assert own["details"]["rule"].startswith("reimburse.csv:")
    assert own["details"]["policy_version"] == version
    assert own["target"] == "reimburse:expense_report"
    assert api.token not in json.dumps([e["details"] for e in recorded])


def test_scopes_answer_the_where_clause(api: Api) -> None:
    response = api.post(
        "/api/v1/authz/scopes", {"user": "bob", "type": "expense_report", "action": "read"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["all"] is False and body["self"] is True
    assert body["departments"] == [{"path": "/总部/华东区", "subtree": True}]
    assert body["policy_version"] == api.live.services.authz.version
    carol = api.post(
        "/api/v1/authz/scopes", {"user": "carol", "type": "expense_report", "action": "read"}
    ).json()
    assert carol["all"] is True
    approve = api.post(
        "/api/v1/authz/scopes", {"user": "bob", "type": "expense_report", "action": "approve"}
    ).json()
    assert approve["self"] is False and approve["exclude"]["self"] is True


def test_explain_and_status_need_the_admin_scope(api: Api) -> None:
    request = {
        "user": "bob",
        "domain": "reimburse",
        "type": "expense_report",
        "action": "approve",
        "owner": "bob",
        "dept": "/总部/华东区",
    }
    refused = api.post("/api/v1/authz/explain", request)
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    explained = api.post("/api/v1/authz/explain", request, token=api.admin_token)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["allowed"] is False and body["rule"].startswith("reimburse.csv:")
    roles = {r["role"]: r for r in body["roles"]}
    assert roles["dept_manager"]["anchors"] == ["/总部/华东区"]
    assert roles["dept_manager"]["chain"][0]["from"].startswith("manager of /总部/华东区")
    assert any(line["decisive"] and line["effect"] == "deny" for line in body["lines"])
    status = httpx.get(
        api.live.url + "/api/v1/authz/policy",
        headers={"Authorization": f"Bearer {api.admin_token}"},
        timeout=10,
    )
    assert status.status_code == 200
    assert status.json()["version"] == api.live.services.authz.version
    assert status.json()["last_reload_ok"] is True
    metrics = httpx.get(api.live.url + "/api/v1/authz/metrics", timeout=10)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    version = api.live.services.authz.version
    assert f'idhub_policy_loaded{{version="{version}"}} 1' in metrics.text
    assert "idhub_policy_last_reload_ok 1" in metrics.text


def test_bad_callers_and_bad_input_get_clear_errors(api: Api) -> None:
    url = api.live.url + "/api/v1/authz/check"
    ok = {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "read"}
    anonymous = httpx.post(url, json=ok, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    forged = api.post("/api/v1/authz/check", ok, token=api.token[:-4] + "AAAA")
    assert forged.status_code == 401
    # A token for another audience is not a token for idhub's APIs.
    other = client_token(api.live, "erp", "authz", resource="erp")
    assert api.post("/api/v1/authz/check", ok, token=other).status_code == 401

    cases = [
        (b"{not json", "not valid JSON"),
        (json.dumps({**ok, "domain": "payroll"}).encode(), "request.domain: unknown domain"),
        (json.dumps({"user": "bob", "domain": "oa"}).encode(), "request.type is required"),
        (json.dumps({"requests": [ok] * 1001}).encode(), "at most 1000 requests"),
        (
            json.dumps({"requests": [ok, {**ok, "color": 1}]}).encode(),
            "requests[1]: unknown field 'color'",
        ),
        (json.dumps({"requests": []}).encode(), "non-empty list"),
        (json.dumps({"domain": "oa", "type": "t", "action": "a"}).encode(), "`user`"),
    ]
    for raw, message in cases:
        response = httpx.post(
            url,
            content=raw,
            timeout=10,
            headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
        )
        assert response.status_code == 400, (raw[:40], response.text)
        assert response.json()["error"] == "invalid_request"
        assert message in response.json()["error_description"], response.text


def test_openapi_document_describes_the_api(api: Api) -> None:
    response = httpx.get(api.live.url + "/api/v1/openapi.json", timeout=10)
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {
        "/api/v1/authz/check",
        "/api/v1/authz/scopes",
        "/api/v1/authz/explain",
        "/api/v1/authz/policy",
    }
    assert doc["servers"] == [{"url": api.live.url}]
    assert doc["components"]["schemas"]["Batch"]["properties"]["requests"]["maxItems"] == 1000


def test_access_tokens_carry_roles_and_policy_version(api: Api) -> None:
    """Contract 4: a user's access token for a policy domain carries their roles there."""
    services = api.live.services
    _, secret = web_client(services, "oa")
    bob = services.identity.get_user_by_username("bob")
    ivan = services.identity.get_user_by_username("ivan")
    assert bob is not None and ivan is not None
    verifier, challenge = pkce_pair()
    code = issue_code(services, "oa", bob, challenge=challenge)
    response = httpx.post(
        api.live.url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": RP,
            "code_verifier": verifier,
        },
        auth=("oa", secret or ""),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    claims = decode(response.json()["access_token"], api.live.url).claims
    assert claims["aud"] == "oa"
    assert claims["roles"] == ["dept_manager", "employee"]
    assert claims["policy_version"] == services.authz.version
    assert services.authz.roles_for(ivan, "reimburse") == []


def test_without_any_loadable_policy_the_api_says_unavailable(
    make_live_server: Callable[..., LiveServer], db_url: str, tmp_path: Path
) -> None:
    broken = tmp_path / "policies"
    shutil.copytree(REPO / "policies", broken)
    (broken / "oa.csv").write_text("p, employee, oa\n", encoding="utf-8")
    live = make_live_server(db_url, toml=NO_WATCH, env={"IDHUB_POLICY_DIR": str(broken)})
    prepare(live.services)
    ready = httpx.get(live.url + "/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["policy"].startswith("no policy loaded: oa.csv:1: error")
    token = client_token(live, "reimburse", "authz")
    response = httpx.post(
        live.url + "/api/v1/authz/check",
        json={"user": "bob", "type": "expense_report", "action": "read"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 503
    assert response.json()["error"] == "policy_unavailable"
    metrics = httpx.get(live.url + "/api/v1/authz/metrics", timeout=10).text
    assert "idhub_policy_last_reload_ok 0" in metrics
    assert 'idhub_policy_reloads_total{result="rejected"} 1' in metrics
    assert 'idhub_policy_loaded{version="none"} 0' in metrics


def test_spellings_and_dot_segments_do_not_talk_a_decision_round(api: Api) -> None:
    """Issue 9: the owner in another spelling bypassed "nobody approves their own report", and
    /总部/华东区/../财务部 was taken for a department under /总部/华东区."""
    own = {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "approve"}
    batch = [
        {**own, "owner": owner, "dept": "/总部/华东区"}
        for owner in ("bob", "Bob", " bob ", "ｂｏｂ", "BOB\u200b")
    ]
    response = api.post("/api/v1/authz/check", {"requests": batch})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["allowed"] for r in results] == [False] * 5
    assert len({r["reason"] for r in results}) == 1
    assert results[0]["reason"].startswith("denied by reimburse.csv:")
    # An owner who is nobody might be bob himself.
    nobody = api.post("/api/v1/authz/check", {**own, "owner": "b0b", "dept": "/总部/华东区"})
    assert nobody.json()["allowed"] is False
    assert nobody.json()["reason"].startswith("unknown owner")

    climbed = {**own, "owner": "carol", "dept": "/总部/华东区/../财务部"}
    single = api.post("/api/v1/authz/check", climbed)
    assert single.status_code == 400
    assert single.json()["error"] == "invalid_request"
    assert single.json()["error_description"].startswith("request.dept: department path")
    assert "'..' segment" in single.json()["error_description"]
    doubled = api.post(
        "/api/v1/authz/check",
        {"requests": [{**own, "owner": "alice", "dept": SALES1}, {**climbed, "dept": "/总部//x"}]},
    )
    assert doubled.status_code == 400
    assert doubled.json()["error_description"].startswith("requests[1].dept: ")
    # The same report spelled differently is still alice's, in bob's 华东区.
    fine = api.post(
        "/api/v1/authz/check", {**own, "user": "Ｂｏｂ", "owner": "Alice", "dept": SALES1}
    )
    assert fine.json()["allowed"] is True


def _user_token(api: Api, username: str) -> str:
    """An access token for idhub issued to a user (not a system's client credentials)."""
    services = api.live.services
    user = services.identity.get_user_by_username(username)
    client = services.clients.get("pdp-admin")
    assert user is not None and client is not None
    token, _claims = services.access_tokens.issue(
        client, sub=user.sub, audience="idhub", scopes=["authz", "authz:admin"]
    )
    return token


def test_a_users_token_asks_only_about_its_own_user(api: Api) -> None:
    about = {"domain": "reimburse", "type": "expense_report", "action": "read", "owner": "alice"}
    alice = _user_token(api, "alice")
    mine = api.post("/api/v1/authz/check", {**about, "user": "alice"}, token=alice)
    assert mine.status_code == 200, mine.text
    assert mine.json()["allowed"] is True
    for other in ({"user": "bob"}, {"user": "nobody"}, {"requests": [{**about, "user": "bob"}]}):
        body = other if "requests" in other else {**about, **other}
        refused = api.post("/api/v1/authz/check", body, token=alice)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "access_denied"
        assert "permission query" in refused.json()["error_description"]
    assert (
        api.post("/api/v1/authz/scopes", {**about, "user": "bob"}, token=alice).status_code == 403
    )
    assert (
        api.post("/api/v1/authz/explain", {**about, "user": "bob"}, token=alice).status_code == 403
    )
    # bob manages alice's department, but the shipped policy lets only admins ask about others.
    bob = _user_token(api, "bob")
    assert api.post("/api/v1/authz/check", {**about, "user": "alice"}, token=bob).status_code == 403
    # dave (系统管理员) may: policies/idhub.csv grants admins `permission query`.
    dave = _user_token(api, "dave")
    asked = api.post("/api/v1/authz/check", {**about, "user": "alice"}, token=dave)
    assert asked.status_code == 200 and asked.json()["allowed"] is True
    # A system's own client-credentials token asks about anyone, as before.
    assert api.post("/api/v1/authz/check", {**about, "user": "alice"}).status_code == 200


def test_a_system_asks_only_about_the_domains_it_is_registered_for(api: Api) -> None:
    """dave (系统管理员) does anything in the ERP, but the reimbursement system has no business
    learning that; the ERP itself, a system registered for it, or an admin tool may ask."""
    about_erp = {"user": "dave", "domain": "erp", "type": "voucher", "action": "approve"}
    refused = api.post("/api/v1/authz/check", about_erp)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "access_denied"
    assert "'erp'" in refused.json()["error_description"]
    # A batch with one such question is refused whole: nothing about the ERP leaks.
    mixed = {"requests": [{**about_erp, "domain": "reimburse"}, about_erp]}
    assert api.post("/api/v1/authz/check", mixed).status_code == 403
    # The same spelling trick as everywhere else does not change whose domain it is.
    spelled = api.post("/api/v1/authz/check", {**about_erp, "domain": " ＥＲＰ "})
    assert spelled.status_code == 403
    erp = client_token(api.live, "erp", "authz")
    assert api.post("/api/v1/authz/check", about_erp, token=erp).json()["allowed"] is True
    _, secret = api.live.services.clients.register(
        "erp-batch",
        grant_types=["client_credentials"],
        scope="authz",
        allowed_audiences=["erp", "idhub"],
    )
    assert secret is not None
    token = httpx.post(
        api.live.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": "authz"},
        auth=("erp-batch", secret),
        timeout=10,
    ).json()["access_token"]
    assert api.post("/api/v1/authz/check", about_erp, token=token).json()["allowed"] is True
    admin = api.post("/api/v1/authz/check", about_erp, token=api.admin_token)
    assert admin.json()["allowed"] is True


def test_a_token_of_a_disabled_or_removed_client_asks_nothing(api: Api) -> None:
    """A system token outlives its client's registration by up to its lifetime; the decision
    API is asked online and refuses it (401 invalid_token, `AccessTokens.verify`) from the
    moment the client is disabled or removed. It used to go on asking about the domain its own
    client_id names; a remembered token, decided on the event loop, too."""
    own = {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "approve"}
    for _ in range(2):  # the second is answered from the remembered token, on the event loop
        assert api.post("/api/v1/authz/check", own).status_code == 200
    clients = api.live.services.clients
    clients.update("reimburse", disabled=True)
    refused = api.post("/api/v1/authz/check", own)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_token"
    clients.update("reimburse", disabled=False)
    assert api.post("/api/v1/authz/check", own).status_code == 200
    erp = client_token(api.live, "erp", "authz")
    about_erp = {**own, "domain": "erp", "type": "voucher"}
    assert api.post("/api/v1/authz/check", about_erp, token=erp).status_code == 200
    clients.remove("erp")
    gone = api.post("/api/v1/authz/check", about_erp, token=erp)
    assert gone.status_code == 401 and gone.json()["error"] == "invalid_token", gone.text


# ---------------------------------------------------------------- checks on the event loop
# A caller whose token was verified before is answered on the event loop when nothing needs
# the database (web/pdp_api.py, `check_without_waiting`); these pin down that the shortcut
# refuses and records exactly what the worker-thread path does.

ALLOWED = {
    "user": "bob",
    "domain": "reimburse",
    "type": "expense_report",
    "action": "approve",
    "resource": {"id": "789", "owner": "alice", "dept": SALES1},
}


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_a_revoked_caller_token_is_refused_at_once_even_when_remembered(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The in-memory copy of the list stops refreshing: the refusal must come from the table.
    monkeypatch.setattr(api.live.services.revocations, "refresh_once", lambda: 0)
    for _ in range(3):  # the first verifies in a worker thread, the others are remembered
        assert api.post("/api/v1/authz/check", ALLOWED).json()["allowed"] is True
    claims = _claims(api.token)
    api.live.services.token_store.revoke_jti(
        str(claims["jti"]),
        expires_at=float(claims["exp"]),
        now=time.time(),  # type: ignore[arg-type]
    )
    # Not after the revocation mirror's next refresh: the very next request.
    refused = api.post("/api/v1/authz/check", ALLOWED)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_token"


def test_an_expired_remembered_caller_token_is_refused(api: Api) -> None:
    services = api.live.services
    client = services.clients.get("reimburse")
    assert client is not None
    token, claims = services.access_tokens.issue(
        client, sub="reimburse", audience="idhub", scopes=["authz"], ttl=2
    )
    for _ in range(2):
        assert api.post("/api/v1/authz/check", ALLOWED, token=token).status_code == 200
    while time.time() <= claims["exp"] + 0.05:
        time.sleep(0.1)
    refused = api.post("/api/v1/authz/check", ALLOWED, token=token)
    assert refused.status_code == 401, refused.text


def test_a_denial_decided_on_the_event_loop_is_in_the_trail_before_the_answer(api: Api) -> None:
    assert api.post("/api/v1/authz/check", ALLOWED).json()["allowed"] is True  # remembered
    before = len(decisions(api.live))
    for i in range(5):
        # Not his own report: deny beats allow (reimburse.csv).
        own = {**ALLOWED, "resource": {"id": f"own-{i}", "owner": "bob", "dept": "/总部/华东区"}}
        answer = api.post("/api/v1/authz/check", own)
        assert answer.json()["allowed"] is False, answer.text
        # Read straight after the answer, from another connection: already committed.
        recorded = decisions(api.live)
        assert len(recorded) == before + i + 1
        assert recorded[-1]["details"]["resource_id"] == f"own-{i}"
        assert recorded[-1]["outcome"] == "denied"


def test_a_user_the_snapshot_lacks_is_looked_up_even_for_a_remembered_token(api: Api) -> None:
    assert api.post("/api/v1/authz/check", ALLOWED).json()["allowed"] is True  # remembered
    # Created after the serving snapshot: only the directory store knows frank yet.
    api.live.services.identity.create_user(username="frank", department_path="/总部/华东区")
    asked = {**ALLOWED, "user": "frank"}
    answer = api.post("/api/v1/authz/check", asked).json()
    assert "unknown user" not in answer["reason"], answer


def test_denials_decided_together_share_one_write_and_each_waits_for_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Denials that arrive while a write runs are recorded in one hand-over to a worker
    thread (web/pdp_records.py), and none is answered before its own record is committed."""
    assert api.post("/api/v1/authz/check", ALLOWED).json()["allowed"] is True  # remembered
    authz = api.live.services.authz
    write = authz.append_decision_events
    writes: list[int] = []

    def slow_write(events: object) -> None:
        time.sleep(0.3)  # long enough for the other denials to queue behind this one
        write(events)  # type: ignore[arg-type]
        writes.append(len(events))  # type: ignore[arg-type]

    monkeypatch.setattr(authz, "append_decision_events", slow_write)
    before = len(decisions(api.live))
    headers = {"Authorization": f"Bearer {api.token}"}

    async def deny_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.live.url, headers=headers, timeout=20) as http:
            own = [
                {
                    **ALLOWED,
                    "resource": {"id": f"batch-{i}", "owner": "bob", "dept": "/总部/华东区"},
                }
                for i in range(8)
            ]
            return list(
                await asyncio.gather(*(http.post("/api/v1/authz/check", json=o) for o in own))
            )

    answers = asyncio.run(deny_all())
    assert all(a.json()["allowed"] is False for a in answers)
    # Every answer came after its write: all eight are in the trail once, none twice.
    recorded = [d["details"]["resource_id"] for d in decisions(api.live)[before:]]
    assert sorted(recorded) == sorted(f"batch-{i}" for i in range(8))
    assert sum(writes) == 8
    if api.live.services.engine.dialect.name == "sqlite":
        # Decided on the event loop: at most two writes in flight, the rest queued together.
        assert len(writes) < 8, writes


def test_checks_that_find_the_registration_due_wait_for_one_read_not_a_thread_each(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a second the client registration's version check is due (a database read): the
    checks arriving meanwhile wait for one read in a worker thread and are then decided on
    the event loop (web/pdp_api.py, `PartiesDue`), instead of each taking the thread path."""
    from starlette.concurrency import run_in_threadpool

    assert api.post("/api/v1/authz/check", ALLOWED).json()["allowed"] is True  # remembered
    clients = api.live.services.clients
    version = clients._store.version
    reads: list[int] = []

    def slow_version() -> int:
        reads.append(1)
        time.sleep(0.3)  # every check of the burst arrives while this read runs
        return version()

    monkeypatch.setattr(clients._store, "version", slow_version)
    hops: list[str] = []

    async def counted(*args: object, **kwargs: object) -> object:
        hops.append("hop")
        return await run_in_threadpool(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("idhub.web.pdp_api.run_in_threadpool", counted)
    clients._checked_at = 0.0  # the version check is due now
    headers = {"Authorization": f"Bearer {api.token}"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.live.url, headers=headers, timeout=20) as http:
            asked = [http.post("/api/v1/authz/check", json=ALLOWED) for _ in range(12)]
            return list(await asyncio.gather(*asked))

    answers = asyncio.run(burst())
    assert [a.json()["allowed"] for a in answers] == [True] * 12
    if api.live.services.engine.dialect.name == "sqlite":
        # PostgreSQL has no probe: its checks take the thread path for the revocation read.
        assert hops == [], f"{len(hops)} checks took the thread path"
        assert 1 <= len(reads) <= 2, reads
