"""The decision client names a user the way idhub's tokens do (issue 14): by the `sub` of a
real user access token, by the validated claims, or by username — against a real idhub on
SQLite and PostgreSQL, for users created after the policy engine took its directory snapshot
(the case that answered "unknown user" until the next poll)."""

from __future__ import annotations

import httpx
import pytest

from idhub.bootstrap import Services
from idhub.core.identity import User
from idhub.sdk import PdpClient, Subject, TokenValidator
from idhub.sdk.pdp import who
from tests.conftest import LiveServer
from tests.oidc_support import (
    ACCESS_TOKEN_TYPE,
    RP,
    TOKEN_EXCHANGE,
    decode,
    issue_code,
    oauth_client,
    pkce_pair,
    web_client,
)

SALES1 = "/总部/华东区/销售一部"
REPORT = ("reimburse", "expense_report", "approve")


def _pdp(server: LiveServer, known_secrets) -> PdpClient:
    _client, secret = server.services.clients.register(
        "reimburse-pdp",
        grant_types=("client_credentials",),
        scope="authz",
        allowed_audiences=("reimburse", "idhub"),
    )
    assert secret is not None
    known_secrets.add(secret)
    return PdpClient(server.url, client_id="reimburse-pdp", client_secret=secret)


def _signed_in(services: Services, url: str, user: User, known_secrets) -> str:
    """The access token the reimbursement system's own sign-in (code flow) gets for `user`:
    scope `openid` only, so nothing but what idhub always puts in access tokens."""
    _client, secret = services.clients.register(
        "reimburse",
        redirect_uris=(RP,),
        grant_types=("authorization_code",),
        scope="openid profile",
    )
    known_secrets.add(secret)
    verifier, challenge = pkce_pair()
    code = issue_code(services, "reimburse", user, challenge=challenge, scope="openid")
    response = httpx.post(
        url + "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": RP,
            "code_verifier": verifier,
        },
        auth=("reimburse", secret or ""),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    known_secrets.add(token)
    return token


def test_a_users_token_subject_reaches_the_decision_api(server: LiveServer, known_secrets) -> None:
    services = server.services
    pdp = _pdp(server, known_secrets)
    # The engine is serving with a directory snapshot that holds none of these people.
    assert pdp.check("bob", *REPORT).reason == "unknown user"

    identity = services.identity
    identity.create_user(username="alice", department_path=SALES1)
    bob = identity.create_user(username="bob", department_path="/总部/华东区")
    identity.set_department_manager("/总部/华东区", bob.id)

    token = _signed_in(services, server.url, bob, known_secrets)
    claims = TokenValidator.from_discovery(server.url, audience="reimburse").validate(token)
    # What a policy domain's system gets in a user's access token (docs/sdk.md).
    assert claims["sub"] == bob.sub and claims["preferred_username"] == "bob"
    assert claims["department"] == "/总部/华东区" and "dept_manager" in claims["roles"]

    # The validated claims, the subject, and the username all name bob.
    for user in (claims, Subject(claims["sub"]), "bob"):
        decision = pdp.check(user, *REPORT, owner="alice", dept=SALES1)
        assert decision.allowed, (user, decision)
    many = pdp.check_many(
        [
            {"user": claims, "domain": "reimburse", "type": "expense_report", "action": "approve",
             "owner": "alice", "dept": SALES1},
            {"sub": bob.sub, "domain": "reimburse", "type": "expense_report", "action": "approve",
             "owner": "bob", "dept": "/总部/华东区"},
        ]
    )  # fmt: skip
    assert [d.allowed for d in many] == [True, False]  # nobody approves their own report

    # Someone created after every token so far, named by sub: the API refreshes its snapshot.
    erin = identity.create_user(username="erin", department_path=SALES1)
    own = pdp.check(Subject(erin.sub), "reimburse", "expense_report", "submit", owner="erin")
    assert own.allowed, own

    # The data scope says whom it resolved, so the filter needs no username from the app.
    scope = pdp.scopes(claims, "reimburse", "expense_report", "read")
    assert scope.user == "bob" and scope.departments
    where, params = scope.sql_where(owner_column="owner", dept_column="dept")
    assert params["idhub_me"] == "bob" and "owner = :idhub_me" in where


def test_an_unknown_or_misplaced_subject_is_a_clear_denial(
    server: LiveServer, known_secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = server.services
    pdp = _pdp(server, known_secrets)
    carol = services.identity.create_user(username="carol", department_path="/总部/财务部")
    refreshes = []
    refresh = services.authz.refresh_directory
    monkeypatch.setattr(
        services.authz, "refresh_directory", lambda: refreshes.append(1) or refresh()
    )

    unknown = pdp.check(Subject("0" * 32), *REPORT)
    assert not unknown.allowed and unknown.reason.startswith("unknown subject")
    for i in range(20):  # made-up people cost a lookup each, never a directory refresh
        assert not pdp.check(Subject(f"{i:032x}"), *REPORT).allowed
    assert refreshes == []
    empty = pdp.scopes(Subject("0" * 32), "reimburse", "expense_report", "read")
    assert empty.user == "" and empty.reason.startswith("unknown subject")
    assert empty.sql_where(owner_column="o", dept_column="d")[0] == "(1=0)"
    # The old example's mistake: a subject sent as a username says what to do instead.
    misplaced = pdp.check(carol.sub, *REPORT)
    assert not misplaced.allowed and "send it as `sub`" in misplaced.reason
    assert refreshes == [1]  # carol exists: the snapshot learnt of her once

    raw = httpx.post(
        server.url + "/api/v1/authz/check",
        json={"sub": 5, "domain": "reimburse", "type": "expense_report", "action": "read"},
        headers={"Authorization": f"Bearer {pdp._access_token(force=False)}"},
        timeout=10,
    )
    assert raw.status_code == 400 and raw.json()["error"] == "invalid_request"


def test_whom_a_question_names() -> None:
    assert who("Bob") == {"user": "Bob"}
    assert who(Subject("abc")) == {"sub": "abc"}
    assert who({"sub": "abc", "client_id": "oa"}) == {"sub": "abc"}
    with pytest.raises(ValueError, match="issued to system 'oa'"):
        who({"sub": "oa", "client_id": "oa"})  # a client-credentials token: no person
    with pytest.raises(ValueError, match="no `sub`"):
        who({"preferred_username": "bob"})
    with pytest.raises(TypeError):
        who(42)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:The httpx module is deprecated")
def test_every_user_token_idhub_issues_names_its_user(server: LiveServer, known_secrets) -> None:
    """ID token, OA's access token and the token OA exchanges for reimbursement (RFC 8693):
    the claims of each, as the SDK validated them, name the same person to the decision API."""
    services = server.services
    pdp = _pdp(server, known_secrets)
    services.identity.create_user(username="alice", department_path=SALES1)
    bob = services.identity.create_user(username="bob", department_path="/总部/华东区")
    services.identity.set_department_manager("/总部/华东区", bob.id)
    _, oa_secret = web_client(services, "oa", allowed_audiences=["reimburse"])
    known_secrets.add(oa_secret)
    oa = oauth_client(server.url, "oa", oa_secret, redirect_uri=RP)
    signed_in = oa.fetch_token(
        server.url + "/token",
        grant_type="authorization_code",
        code=issue_code(services, "oa", bob, scope="openid"),
    )
    exchanged = oa.fetch_token(
        server.url + "/token",
        grant_type=TOKEN_EXCHANGE,
        subject_token=signed_in["access_token"],
        subject_token_type=ACCESS_TOKEN_TYPE,
        resource="reimburse",
    )
    for token in (signed_in["access_token"], signed_in["id_token"], exchanged["access_token"]):
        known_secrets.add(token)
    on_behalf = TokenValidator.from_discovery(server.url, audience="reimburse").validate(
        exchanged["access_token"]
    )
    assert on_behalf["act"] == {"sub": "oa"} and on_behalf["preferred_username"] == "bob"
    every = [
        TokenValidator.from_discovery(server.url, audience="oa").validate(
            signed_in["access_token"]
        ),
        dict(decode(signed_in["id_token"], server.url).claims),
        on_behalf,
    ]
    for claims in every:
        assert claims["sub"] == bob.sub
        assert pdp.check(claims, *REPORT, owner="alice", dept=SALES1).allowed
        assert pdp.scopes(claims, "reimburse", "expense_report", "read").user == "bob"
