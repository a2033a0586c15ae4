"""`GET /api/v1/audit` end to end: a live server, a real client-credentials token from
`/token` (aud idhub, scope audit:read) for a client listed in `[server] admin_clients`,
filters and cursor paging over real HTTP, and users' tokens from the real code flow (login
form, authlib's client) decided by idhub's shipped policy; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from authlib.common.security import generate_token

from idhub.core.audit import Actor, EventType, RequestContext
from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer
from tests.oidc_support import prepare
from tests.sso_support import events, follow, make_user, oauth_client, sign_in_at

ADMIN_TOML = '[server]\nadmin_clients = ["auditor"]\n'


@pytest.fixture
def server(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    live = make_live_server(db_url, toml=ADMIN_TOML)
    prepare(live.services)
    return live


def _token(
    server: LiveServer,
    known: KnownSecrets,
    client_id: str = "auditor",
    *,
    registered_scope: str = "audit:read",
    scope: str = "audit:read",
    resource: str | None = "idhub",
) -> str:
    _, secret = server.services.clients.register(
        client_id,
        grant_types=["client_credentials"],
        scope=registered_scope,
        token_endpoint_auth_method="client_secret_basic",
    )
    known.add(secret)
    form = {"grant_type": "client_credentials", "scope": scope}
    if resource:
        form["resource"] = resource
    response = httpx.post(f"{server.url}/token", data=form, auth=(client_id, str(secret)))
    assert response.status_code == 200, response.text
    token = str(response.json()["access_token"])
    known.add(token)
    return token


def _seed(server: LiveServer, n: int = 25) -> None:
    for i in range(n):
        server.services.audit.record(
            EventType.LOGIN_FAILED if i % 3 == 0 else EventType.LOGIN_SUCCEEDED,
            actor=Actor("user", f"user{i % 5}"),
            target="client:oa",
            outcome="failure" if i % 3 == 0 else "success",
            details={"i": i},
            ctx=RequestContext("10.0.0.9", "pytest", f"req-{i:06d}"),
        )


def _get(server: LiveServer, token: str | None, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.url}/api/v1/audit", params=params, headers=headers)


def test_admin_client_pages_through_filtered_events(
    server: LiveServer, known_secrets: KnownSecrets
) -> None:
    token = _token(server, known_secrets)
    _seed(server)
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"type": "login.*", "limit": 4}
        if cursor:
            params["cursor"] = cursor
        response = _get(server, token, **params)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        seen.extend(body["events"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 7 and len(seen) == 25
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 25
    stored = {e.seq: e.hash for e in server.services.audit_log.search(limit=1000)}
    assert all(stored[e["seq"]] == e["hash"] for e in seen)

    failed = _get(server, token, type="login.failed", actor="user:user0", order="asc").json()
    assert [e["details"]["i"] for e in failed["events"]] == [0, 15]
    assert failed["next_cursor"] is None

    outcome = _get(server, token, outcome="failure", target="client:oa", limit=1000).json()
    assert len(outcome["events"]) == 9

    # The token the client got is in the trail as an event, never as a value.
    issued = _get(server, token, type="token.issued", actor="client:auditor").json()
    assert len(issued["events"]) == 1
    assert issued["events"][0]["details"]["audience"] == "idhub"
    assert token not in str(issued)

    since = _get(server, token, since="1h", until="2999-01-01", limit=1000).json()
    # Everything recorded in the last hour: the seeded logins, the token, whatever start-up
    # recorded (keys, policy load) - as many as the table holds.
    assert len(since["events"]) == server.services.audit_log.count() >= 26
    nothing = _get(server, token, until="2000-01-01").json()
    assert nothing == {"events": [], "next_cursor": None}


def test_requests_without_the_right_token_are_refused(
    server: LiveServer, known_secrets: KnownSecrets
) -> None:
    _seed(server, 3)
    missing = _get(server, None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"] == "invalid_token"

    assert _get(server, "not-a-token").status_code == 401

    # Registered for the scope but asked only for authz: RFC 6750 insufficient_scope.
    narrow = _token(server, known_secrets, "auditor", registered_scope="authz audit:read",
                    scope="authz")  # fmt: skip
    response = _get(server, narrow)
    assert response.status_code == 403 and response.json()["error"] == "insufficient_scope"
    assert 'scope="audit:read"' in response.headers["www-authenticate"]

    # A token for another audience is not a token for idhub.
    other = _token(server, known_secrets, "reporting", resource=None)
    assert _get(server, other).status_code == 401

    # The right scope, but the client is not an admin client.
    outsider = _token(server, known_secrets, "outsider")
    response = _get(server, outsider)
    assert response.status_code == 403 and response.json()["error"] == "access_denied"
    assert "admin_clients" in response.json()["error_description"]


def test_bad_parameters_are_400_not_500(server: LiveServer, known_secrets: KnownSecrets) -> None:
    token = _token(server, known_secrets)
    cases = {
        "type": ("login.maybe", "unknown audit event type"),
        "outcome": ("meh", "outcome must be one of"),
        "since": ("last tuesday", "is not a time"),
        "limit": ("0", "between 1 and 1000"),
        "cursor": ("!!!", "cursor"),
        "order": ("sideways", "asc or desc"),
        "colour": ("red", "unknown parameter"),
    }
    for name, (value, message) in cases.items():
        response = _get(server, token, **{name: value})
        assert response.status_code == 400, (name, response.text)
        assert message in response.json()["error_description"], name


# ------------------------------------------------------------------ users' own tokens

CONSOLE = "console"  # a first-party audit console; deliberately not in admin_clients
PASSWORDS = {"grace": "grace-password-1", "alice": "alice-password-1"}


@pytest.fixture
def console(server: LiveServer, known_secrets: KnownSecrets) -> str:
    """The console's client secret; grace (in 审计组, so auditor) and alice (a plain
    employee) exist and the policy engine has seen them."""
    services = server.services
    _, secret = services.clients.register(
        CONSOLE,
        name="Audit console",
        redirect_uris=["http://127.0.0.1:8001/callback"],
        first_party=True,
        scope="openid audit:read",
        allowed_audiences=("idhub",),
    )
    assert secret is not None
    known_secrets.add(secret, *PASSWORDS.values())
    grace = make_user(services, "grace", PASSWORDS["grace"], department_path="/总部/审计部")
    make_user(services, "alice", PASSWORDS["alice"], department_path="/总部/华东区/销售一部")
    services.identity.set_group_members(services.identity.ensure_group("审计组").id, [grace.id])
    # What the background poll does every few seconds, done now.
    services.authz.refresh_directory()
    return str(secret)


def _user_token(server: LiveServer, known: KnownSecrets, secret: str, username: str) -> str:
    """The user's access token for idhub, through the real login form and code flow."""
    rp = oauth_client(server.url, CONSOLE, secret, scope="openid audit:read")
    verifier = generate_token(48)
    url, _state = rp.create_authorization_url(
        f"{server.url}/authorize", code_verifier=verifier, nonce=generate_token(16),
        resource="idhub",
    )  # fmt: skip
    with httpx.Client(base_url=server.url) as browser:
        callback = sign_in_at(browser, follow(browser, url), username, PASSWORDS[username])
    assert callback.status_code == 302, callback.text[:300]
    location = callback.headers["location"]
    known.add(location, verifier)
    token = rp.fetch_token(
        f"{server.url}/token", authorization_response=location, code_verifier=verifier
    )
    known.add(*(token.get(k) for k in ("access_token", "id_token", "refresh_token")))
    return str(token["access_token"])


def test_an_auditor_reads_the_trail_with_her_own_token(
    server: LiveServer, known_secrets: KnownSecrets, console: str
) -> None:
    services = server.services
    _seed(server, 3)
    token = _user_token(server, known_secrets, console, "grace")
    claims = services.access_tokens.verify(token, audience="idhub")
    grace = services.identity.get_user_by_username("grace")
    assert grace is not None and claims["sub"] == grace.sub
    assert claims["client_id"] == CONSOLE and "audit:read" in claims["scope"].split()
    assert CONSOLE not in services.settings.server.admin_clients

    response = _get(server, token, type="login.*", limit=1000)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    logins = response.json()["events"]
    assert {e["details"].get("i") for e in logins} >= {0, 1, 2}
    assert ("user", grace.sub) in {(e["actor_type"], e["actor_id"]) for e in logins}  # her login


def test_an_employee_is_refused_and_the_denial_is_audited(
    server: LiveServer, known_secrets: KnownSecrets, console: str
) -> None:
    services = server.services
    _seed(server, 3)
    token = _user_token(server, known_secrets, console, "alice")
    alice = services.identity.get_user_by_username("alice")
    assert alice is not None
    assert services.access_tokens.verify(token, audience="idhub")["sub"] == alice.sub
    before = len(events(services, "authz.decision"))

    refused = _get(server, token)
    assert refused.status_code == 403, refused.text
    assert refused.headers["cache-control"] == "no-store"
    body = refused.json()
    assert body == {
        "error": "access_denied",
        "error_description": "user 'alice' may not read the audit trail: no rule matched "
        "(policy domain idhub, audit_event read)",
    }

    decisions = events(services, "authz.decision")
    assert len(decisions) == before + 1
    denial = decisions[-1]
    assert (denial["actor_type"], denial["actor_id"]) == ("user", alice.sub)
    assert denial["outcome"] == "denied" and denial["target"] == "idhub:audit_event"
    details = denial["details"]
    assert (details["user"], details["sub"], details["client_id"]) == ("alice", alice.sub, CONSOLE)
    assert (details["domain"], details["type"], details["action"]) == (
        "idhub",
        "audit_event",
        "read",
    )
    assert details["allowed"] is False
    assert details["policy_version"] == services.authz.engine.version
    assert "rule" not in details  # nothing matched
    assert token not in str(denial)


def test_a_disabled_users_token_reads_nothing(
    server: LiveServer, known_secrets: KnownSecrets, console: str
) -> None:
    services = server.services
    token = _user_token(server, known_secrets, console, "grace")
    assert _get(server, token, limit=1).status_code == 200
    grace = services.identity.get_user_by_username("grace")
    assert grace is not None
    # Disabled in the store; the token itself stays valid until it expires.
    services.identity.set_disabled(grace.id, True, reason="left")
    assert services.access_tokens.verify(token, audience="idhub")["sub"] == grace.sub
    refused = _get(server, token, limit=1)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error_description"] == (
        "user 'grace' may not read the audit trail: user is disabled "
        "(policy domain idhub, audit_event read)"
    )
