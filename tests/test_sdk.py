"""The SDK a system imports, against a real idhub: offline token validation, back-channel
logout tokens, the decision client and its SQL filter, and the ASGI middleware."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from idhub.sdk import InvalidToken, LogoutTokenValidator, PdpClient, PdpError, TokenValidator
from idhub.sdk.errors import Replayed
from idhub.sdk.starlette import BearerAuthMiddleware
from tests.conftest import LiveServer, serve_asgi


def _system_client(server: LiveServer, known_secrets, client_id: str = "oa-batch") -> str:
    _client, secret = server.services.clients.register(
        client_id,
        grant_types=("client_credentials",),
        scope="authz",
        allowed_audiences=("reimburse", "idhub"),
    )
    assert secret is not None
    known_secrets.add(secret)
    return secret


def _token(server: LiveServer, client_id: str, secret: str, resource: str, known_secrets) -> str:
    response = httpx.post(
        f"{server.url}/token",
        data={"grant_type": "client_credentials", "resource": resource},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    known_secrets.add(token)
    return token


def test_resource_system_validates_tokens_offline(server: LiveServer, known_secrets) -> None:
    secret = _system_client(server, known_secrets)
    token = _token(server, "oa-batch", secret, "reimburse", known_secrets)

    validator = TokenValidator.from_discovery(server.url, audience="reimburse")
    claims = validator.validate(token)
    assert claims["aud"] == "reimburse" and claims["client_id"] == "oa-batch"
    assert validator.validate(token) == claims  # served from the cache the second time

    with pytest.raises(InvalidToken, match="not 'oa'"):
        TokenValidator.from_discovery(server.url, audience="oa").validate(token)
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(InvalidToken):
        validator.validate(forged)
    with pytest.raises(InvalidToken, match="compact"):
        validator.validate("not-a-token")


# pytest re-installs its own warning filters per test, over the SDK's import-time one.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_every_signing_algorithm_validates(server: LiveServer, known_secrets, alg: str) -> None:
    _client, secret = server.services.clients.register(
        f"batch-{alg.lower()}",
        grant_types=("client_credentials",),
        allowed_audiences=("reimburse",),
        access_token_alg=alg,
    )
    assert secret is not None
    known_secrets.add(secret)
    token = _token(server, f"batch-{alg.lower()}", secret, "reimburse", known_secrets)
    validator = TokenValidator.from_discovery(server.url, audience="reimburse")
    assert validator.validate(token)["client_id"] == f"batch-{alg.lower()}"


def test_validator_follows_key_rotation(server: LiveServer, known_secrets) -> None:
    secret = _system_client(server, known_secrets)
    validator = TokenValidator.from_discovery(server.url, audience="reimburse")
    before = _token(server, "oa-batch", secret, "reimburse", known_secrets)
    validator.validate(before)
    server.services.keys.rotate()
    after = _token(server, "oa-batch", secret, "reimburse", known_secrets)
    # A new key id is looked up at most once a second (forged kids cannot flood idhub).
    time.sleep(1.05)
    assert after.split(".")[0] != before.split(".")[0]  # another kid in the header
    assert validator.validate(after)["jti"] != validator.validate(before)["jti"]


def test_logout_token_validation(server: LiveServer) -> None:
    services = server.services
    client, _ = services.clients.register(
        "oa-web", redirect_uris=("http://127.0.0.1:9/cb",), first_party=True
    )
    token = services.id_tokens.sign_logout_token(client, sub="subject-1", sid="sid-1")
    validator = LogoutTokenValidator(server.url, client_id="oa-web")
    event = validator.validate(token)
    assert (event.sub, event.sid) == ("subject-1", "sid-1")
    with pytest.raises(Replayed):
        validator.validate(token)
    with pytest.raises(InvalidToken):
        LogoutTokenValidator(server.url, client_id="reimburse").validate(
            services.id_tokens.sign_logout_token(client, sub="subject-1", sid="sid-2")
        )


def test_pdp_client_and_sql_filter(server: LiveServer, known_secrets) -> None:
    identity = server.services.identity
    alice = identity.create_user(username="alice", department_path="/总部/华东区/销售一部")
    bob = identity.create_user(username="bob", department_path="/总部/华东区")
    identity.create_user(username="henry", department_path="/总部/华南区")
    identity.set_department_manager("/总部/华东区", bob.id)
    server.services.authz.refresh_directory()
    secret = _system_client(server, known_secrets, "reimburse-pdp")
    pdp = PdpClient(server.url, client_id="reimburse-pdp", client_secret=secret)

    allowed = pdp.check(
        "bob", "reimburse", "expense_report", "approve", owner="alice", dept=alice.department_path
    )
    assert allowed.allowed and allowed.policy_version
    denied = pdp.check(
        "alice", "reimburse", "expense_report", "approve", owner="henry", dept="/总部/华南区"
    )
    assert not denied.allowed
    batch = pdp.check_many(
        [
            {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "read",
             "owner": "henry", "dept": "/总部/华南区"},
            {"user": "bob", "domain": "reimburse", "type": "expense_report", "action": "read",
             "owner": "alice", "dept": "/总部/华东区/销售一部"},
        ]
    )  # fmt: skip
    assert [d.allowed for d in batch] == [False, True]

    # The filter, applied by a system's own database, returns exactly the rows `check` allows.
    scope = pdp.scopes("bob", "reimburse", "expense_report", "read")
    where, params = scope.sql_where(owner_column="owner", dept_column="dept", me="bob")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE reports (id INTEGER, owner TEXT, dept TEXT)")
    rows = [
        (1, "alice", "/总部/华东区/销售一部"),
        (2, "bob", "/总部/华东区"),
        (3, "henry", "/总部/华南区"),
        (4, "x", "/总部/华东区二部"),  # a sibling whose name merely starts the same
        (5, "y", "/总部/华东区/销售_部"),
    ]
    db.executemany("INSERT INTO reports VALUES (?, ?, ?)", rows)
    visible = {r[0] for r in db.execute(f"SELECT id FROM reports WHERE {where}", params)}  # noqa: S608
    expected = {
        r[0]
        for r in rows
        if pdp.check("bob", "reimburse", "expense_report", "read", owner=r[1], dept=r[2]).allowed
    }
    assert visible == expected and 1 in visible and 3 not in visible and 4 not in visible

    with pytest.raises(PdpError, match="invalid_client"):
        PdpClient(server.url, client_id="reimburse-pdp", client_secret="wrong").check(
            "bob", "reimburse", "expense_report", "read"
        )


def test_bearer_middleware_guards_a_system(server: LiveServer, known_secrets) -> None:
    secret = _system_client(server, known_secrets)
    token = _token(server, "oa-batch", secret, "reimburse", known_secrets)
    other = _token(server, "oa-batch", secret, "idhub", known_secrets)

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"client": request.state.idhub_claims["client_id"]})

    validator = TokenValidator.from_discovery(server.url, audience="reimburse")
    app = Starlette(routes=[Route("/me", whoami)])
    guarded = BearerAuthMiddleware(app, validator=validator)
    with serve_asgi(guarded) as url, httpx.Client(base_url=url) as client:
        assert client.get("/me", headers={"Authorization": f"Bearer {token}"}).json() == {
            "client": "oa-batch"
        }
        missing = client.get("/me")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="idhub"'
        wrong_audience = client.get("/me", headers={"Authorization": f"Bearer {other}"})
        assert wrong_audience.status_code == 401
        assert 'error="invalid_token"' in wrong_audience.headers["www-authenticate"]


def test_the_sql_filter_compares_department_paths_segment_by_segment() -> None:
    from idhub.sdk.identifiers import canonical_name, canonical_path
    from idhub.sdk.pdp import DataScope, DepartmentScope

    scope = DataScope(
        all=False,
        self=True,
        departments=(DepartmentScope("/总部/华东区", True),),
        exclude_self=False,
    )
    # `me` in any spelling is the canonical username the owner column holds.
    where, params = scope.sql_where(owner_column="owner", dept_column="dept", me=" ＢＯＢ ")
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE reports (id INTEGER, owner TEXT, dept TEXT)")
    rows = [
        (1, "alice", "/总部/华东区/销售一部"),
        (2, "x", "/总部/华东区"),
        (3, "x", "/总部/华东区/../财务部"),  # not a path: below nothing
        (4, "x", "/总部/华东区//财务部"),
        (5, "x", "/总部/华东区/"),
        (6, "x", "/总部/华东区/./财务部"),
        (7, "x", "/总部/华东"),  # a prefix as text, not as a department
        (8, "x", "/总部/华东区二部"),
        (9, canonical_name("Bob"), canonical_path("/总部/ 财务部")),
    ]
    db.executemany("INSERT INTO reports VALUES (?, ?, ?)", rows)
    visible = {r[0] for r in db.execute(f"SELECT id FROM reports WHERE {where}", params)}  # noqa: S608
    assert visible == {1, 2, 9}
