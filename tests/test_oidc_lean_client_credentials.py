"""The lean client-credentials path (oidc/client_credentials.py) answers exactly like authlib's
generic grant: the same statuses, headers, bodies, token claims and audit events, for good and
bad requests, on both databases. Each request is sent twice, once down each path, from two
client addresses, so the two runs have their own throttle counters and audit rows; the clock
is frozen, so a throttle delay cannot run out between the two."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.clock import FrozenClock
from idhub.oidc import jws
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from tests.conftest import LiveServer
from tests.oidc_support import basic_header as _basic
from tests.oidc_support import prepare, raw_form_request

LEAN_IP, GENERIC_IP = "10.9.0.1", "10.9.0.2"
# What differs between two tokens issued a moment apart.
VOLATILE = {"jti", "iat", "exp"}


def _request(
    form: list[tuple[str, str]], ip: str, *, headers: dict[str, str] | None = None
) -> OAuthRequestData:
    return raw_form_request("/token", form, ip, headers=headers)


def _send(
    services: Services, form: list[tuple[str, str]], ip: str, *, lean: bool, **kw: Any
) -> OAuthResponseData:
    provider = services.oidc
    saved = provider.lean_client_credentials
    if not lean:
        provider.lean_client_credentials = None
    try:
        return provider.token(_request(form, ip, **kw))
    finally:
        provider.lean_client_credentials = saved


def _answer(services: Services, response: OAuthResponseData) -> dict[str, Any]:
    body = dict(response.body) if isinstance(response.body, dict) else {"raw": response.body}
    token = body.pop("access_token", None)
    out: dict[str, Any] = {"status": response.status, "headers": response.headers, "body": body}
    if token:
        claims = services.access_tokens.verify_offline(token)  # signature checked
        out["header"] = jws.parse(token)[0]
        out["claims"] = {k: v for k, v in claims.items() if k not in VOLATILE}
    return out


def _events(services: Services, ip: str) -> list[dict[str, Any]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.client_ip == ip).order_by(audit_events.c.seq)
        ).all()
    events = []
    for row in rows:
        details = json.loads(str(row.details))
        details.pop("jti", None)
        events.append(
            {
                "type": row.event_type,
                "actor": (row.actor_type, row.actor_id),
                "target": row.target,
                "outcome": row.outcome,
                "agent": (row.user_agent, row.request_id),
                "details": details,
            }
        )
    return events


def _both(services: Services, form: list[tuple[str, str]], **kw: Any) -> dict[str, Any]:
    """Sends `form` down both paths; asserts the answers match and returns the lean one."""
    lean = _answer(services, _send(services, form, LEAN_IP, lean=True, **kw))
    generic = _answer(services, _send(services, form, GENERIC_IP, lean=False, **kw))
    assert lean == generic, form
    return lean


def _register(services: Services) -> dict[str, str]:
    prepare(services)
    secrets = {}
    for client_id, kw in {
        "batch": {"scope": "authz audit:read", "allowed_audiences": ["reimburse"]},
        "batch-rs": {"scope": "authz", "access_token_alg": "RS256"},
        "web-only": {
            "grant_types": ["authorization_code"],
            "redirect_uris": ["http://127.0.0.1:9/cb"],
        },
        "posting": {"scope": "authz", "token_endpoint_auth_method": "client_secret_post"},
        "gone": {"scope": "authz"},
    }.items():
        kw.setdefault("grant_types", ["client_credentials"])
        _, secret = services.clients.register(client_id, **kw)
        assert secret
        secrets[client_id] = secret
    services.clients.update("gone", disabled=True)
    return secrets


@pytest.fixture
def services(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Services:
    return make_services(make_settings(db_url), clock=FrozenClock(1_800_000_000.0))


def test_lean_and_generic_paths_answer_and_record_alike(services: Services) -> None:
    secrets = _register(services)
    auth = {"authorization": _basic("batch", secrets["batch"])}
    cc = ("grant_type", "client_credentials")
    good = [
        [cc, ("scope", "authz")],
        [cc],
        [cc, ("scope", "authz audit:read"), ("resource", "reimburse")],
        [cc, ("resource", "idhub"), ("scope", "authz")],
        [cc, ("audience", "reimburse")],
        [cc, ("client_id", "batch")],
    ]
    for form in good:
        assert _both(services, form, headers=auth)["status"] == 200, form
    rs = _both(services, [cc], headers={"authorization": _basic("batch-rs", secrets["batch-rs"])})
    assert rs["status"] == 200 and rs["header"]["alg"] == "RS256"
    bad = [
        ([cc, ("scope", "authz:admin")], auth, 400),  # invalid_scope
        ([cc, ("resource", "erp")], auth, 400),  # invalid_target
        ([cc, ("scope", "authz"), ("scope", "authz")], auth, 400),  # repeated parameter
        ([cc, ("client_id", "other")], auth, 400),  # two clients named
        ([cc, ("client_secret", "x")], auth, 400),  # two methods
        ([cc], {"authorization": _basic("nobody", "x")}, 401),  # unknown client
        ([cc], {"authorization": _basic("gone", secrets["gone"])}, 401),  # disabled
        (
            [cc],
            {"authorization": _basic("web-only", secrets["web-only"])},
            400,
        ),  # unauthorized
        ([cc], {"authorization": _basic("posting", secrets["posting"])}, 401),  # wrong method
        ([cc], {"authorization": "Basic !!!"}, 401),  # unusable Basic
        ([cc], {"authorization": _basic("batch", "")}, 401),  # empty secret
        ([cc], {}, 401),  # no credentials
        ([("grant_type", "password")], auth, 400),  # unsupported grant
    ]
    for form, headers, status in bad:
        answer = _both(services, form, headers=headers)
        assert answer["status"] == status, (form, answer)
    # A wrong secret until the client is throttled: the same 401s with WWW-Authenticate, the
    # same refusals, the same throttle events.
    wrong = {"authorization": _basic("batch", "not-the-secret")}
    answers = [_both(services, [cc, ("scope", "authz")], headers=wrong) for _ in range(12)]
    assert all(a["status"] == 401 for a in answers)
    assert any(name == "WWW-Authenticate" for name, _ in answers[0]["headers"])
    assert answers[-1]["body"]["error_description"] == "too many failed attempts"
    # Throttled: even the right secret is refused now, on both paths alike.
    refused = _both(services, [cc, ("scope", "authz")], headers=auth)
    assert refused["status"] == 401
    assert _events(services, LEAN_IP) == _events(services, GENERIC_IP)
    kinds = {e["type"] for e in _events(services, LEAN_IP)}
    assert {"token.issued", "token.request_failed", "client.auth_throttled"} <= kinds


def test_the_common_request_takes_the_lean_path(services: Services) -> None:
    secrets = _register(services)
    lean = services.oidc.lean_client_credentials
    assert lean is not None
    auth = {"authorization": _basic("batch", secrets["batch"])}
    cc = ("grant_type", "client_credentials")
    assert lean.plan(_request([cc, ("scope", "authz")], LEAN_IP, headers=auth)) is not None
    for form, headers in [
        ([cc, ("scope", "a"), ("scope", "b")], auth),
        ([cc, ("client_secret", "x")], auth),
        ([cc], {"authorization": _basic("nobody", "x")}),
        ([cc], {"authorization": _basic("posting", secrets["posting"])}),
        ([cc], {"Authorization": auth["authorization"]}),
        ([("grant_type", "refresh_token")], auth),
    ]:
        assert lean.plan(_request(form, LEAN_IP, headers=headers)) is None, (form, headers)


def test_lean_path_fails_closed_when_the_audit_trail_is_away(services: Services) -> None:
    secrets = _register(services)
    auth = {"authorization": _basic("batch", secrets["batch"])}
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        answer = _both(services, [("grant_type", "client_credentials")], headers=auth)
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert answer["status"] == 503 and "claims" not in answer


def test_a_batch_answers_each_request_as_alone(services: Services) -> None:
    """`token_many` (what the web layer hands over together) gives every request the answer
    and the events it gets on its own, good and bad mixed, lean and generic mixed."""
    secrets = _register(services)
    auth = {"authorization": _basic("batch", secrets["batch"])}
    cc = ("grant_type", "client_credentials")
    cases: list[tuple[list[tuple[str, str]], dict[str, str]]] = [
        ([cc, ("scope", "authz")], auth),
        ([cc, ("scope", "authz:admin")], auth),
        ([cc], {"authorization": _basic("nobody", "x")}),
        ([cc, ("resource", "reimburse")], auth),
        ([cc], {"authorization": _basic("batch", "wrong")}),
        ([("grant_type", "password")], auth),
        ([cc], {"authorization": _basic("batch-rs", secrets["batch-rs"])}),
    ]
    together = services.oidc.token_many([_request(f, LEAN_IP, headers=h) for f, h in cases])
    alone = [services.oidc.token(_request(f, GENERIC_IP, headers=h)) for f, h in cases]
    assert [_answer(services, r) for r in together] == [_answer(services, r) for r in alone]
    assert [r.status for r in together] == [200, 400, 401, 200, 401, 400, 200]
    # The same events; their order among requests that arrived together is not defined (the
    # failures are written as they are decided, the issued tokens' events together at the end).
    assert _sorted(_events(services, LEAN_IP)) == _sorted(_events(services, GENERIC_IP))


def _sorted(events: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(e, sort_keys=True) for e in events)


def test_a_batch_whose_events_cannot_be_written_issues_nothing(services: Services) -> None:
    secrets = _register(services)
    auth = {"authorization": _basic("batch", secrets["batch"])}
    batch = [_request([("grant_type", "client_credentials")], LEAN_IP, headers=auth)] * 3
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        answers = services.oidc.token_many(batch)
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert [a.status for a in answers] == [503, 503, 503]
    assert all("access_token" not in a.body for a in answers)
    assert [a.status for a in services.oidc.token_many(batch)] == [200, 200, 200]


def test_concurrent_token_requests_over_http_each_get_their_own_answer(
    live_server: LiveServer,
) -> None:
    """Through the web layer (batched on SQLite): every good request gets a token whose event
    is in the chain, every bad one its own error, and the chain verifies."""
    services = live_server.services
    secrets = _register(services)
    good = ("batch", secrets["batch"])
    bad = ("batch", "not-the-secret")

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/token",
                            data={"grant_type": "client_credentials", "scope": "authz"},
                            auth=good if n % 8 else bad,
                        )
                        for n in range(40)
                    )
                )
            )

    answers = asyncio.run(main())
    tokens = [a.json()["access_token"] for a in answers if a.status_code == 200]
    assert len(tokens) == 35 and len(set(tokens)) == 35
    assert all(a.status_code == 401 for i, a in enumerate(answers) if i % 8 == 0)
    issued = {
        json.loads(str(row.details))["jti"]
        for row in _rows(services)
        if row.event_type == "token.issued"
    }
    assert {services.access_tokens.verify(t)["jti"] for t in tokens} == issued
    assert services.audit_log.verify().ok


def _rows(services: Services) -> list[Any]:
    with services.engine.connect() as conn:
        return list(conn.execute(select(audit_events)).all())


def _counting_reads(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many keys each throttle read asked for (the real store still answers)."""
    store = services.throttle._store  # the real store, observed
    reads: list[int] = []
    real = store.counters

    def counters(keys: Any) -> Any:
        reads.append(len(keys))
        return real(keys)

    monkeypatch.setattr(store, "counters", counters)
    return reads


def test_a_batch_reads_the_throttle_once(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean requests of a batch read their throttle counters once per client and address,
    not once each: on PostgreSQL each read is a round trip, and one after another they made a
    batch slower than a thread per request (docs/performance.md)."""
    secrets = _register(services)
    auth = {"authorization": _basic("batch", secrets["batch"])}
    other = {"authorization": _basic("batch-rs", secrets["batch-rs"])}
    cc = [("grant_type", "client_credentials")]
    batch = [_request(cc, LEAN_IP, headers=auth) for _ in range(5)]
    batch += [_request(cc, GENERIC_IP, headers=other)]
    reads = _counting_reads(services, monkeypatch)
    assert [a.status for a in services.oidc.token_many(batch)] == [200] * 6
    # One read per client and address (core/client_guard.py `ThrottleBatch`), each of its
    # two keys: the address, and the client at that address.
    assert reads == [2, 2]


def test_a_failure_in_a_batch_is_seen_by_the_requests_after_it(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a request of the batch counted a failure, the ones after it read the counters
    again, as they would alone: wrong secrets past the free ones get "too many failed
    attempts", and so does the right secret behind them."""
    secrets = _register(services)
    wrong = {"authorization": _basic("batch", "not-the-secret")}
    right = {"authorization": _basic("batch", secrets["batch"])}
    cc = [("grant_type", "client_credentials")]
    headers = [wrong] * 5 + [right]
    reads = _counting_reads(services, monkeypatch)
    together = services.oidc.token_many([_request(cc, LEAN_IP, headers=h) for h in headers])
    in_batch = len(reads)
    alone = [services.oidc.token(_request(cc, GENERIC_IP, headers=h)) for h in headers]
    assert [_answer(services, r) for r in together] == [_answer(services, r) for r in alone]
    descriptions = [r.body["error_description"] for r in together]  # type: ignore[index]
    assert descriptions[0] == "client authentication failed"
    assert descriptions[-2:] == ["too many failed attempts"] * 2
    # In the batch: the first attempt's read, and a fresh one after each of the four failures
    # counted (the fifth wrong guess is refused already and counts nothing, so the right
    # secret behind it is judged on that read); alone, one read each.
    assert reads == [2] * 11 and in_batch == 5
    assert _sorted(_events(services, LEAN_IP)) == _sorted(_events(services, GENERIC_IP))


def test_only_the_batched_grants_go_in_batches(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `batched_grants` (PostgreSQL: client credentials only) every other grant is handed
    to the threadpool alone (`Provider.token`), as before; client credentials go in batches
    (`Provider.token_many`, which the batcher calls directly)."""
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from idhub.web.oauth import OAuthEndpoints

    secrets = _register(services)
    alone: list[str | None] = []
    token = services.oidc.token

    def counted(data: OAuthRequestData) -> OAuthResponseData:
        alone.append(data.params.get("grant_type"))
        return token(data)

    monkeypatch.setattr(services.oidc, "token", counted)
    endpoints = OAuthEndpoints(
        provider=services.oidc,
        issuer=services.settings.server.issuer,
        batch_tokens=True,
        batched_grants=frozenset({"client_credentials"}),
    )
    auth = {"Authorization": _basic("batch", secrets["batch"])}
    with TestClient(Starlette(routes=endpoints.routes())) as client:
        cc = client.post("/token", data={"grant_type": "client_credentials"}, headers=auth)
        refresh = client.post(
            "/token", data={"grant_type": "refresh_token", "refresh_token": "x"}, headers=auth
        )
    assert cc.status_code == 200 and refresh.status_code == 400
    assert alone == ["refresh_token"]
