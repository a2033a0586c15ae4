"""The lean introspection path (oidc/introspection_lean.py) answers exactly like the generic
one (`Provider.introspect`: authlib's client authentication): the same statuses, headers,
bodies and audit events, for good and bad requests, on both databases. Each request is sent
twice, once down each path, from two client addresses, so the two runs have their own
throttle counters and audit rows; the clock is frozen, so a throttle delay cannot run out
between the two. Also: the revocation list is read through the SQLite probe."""

from __future__ import annotations

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
from idhub.oidc import introspection_lean
from idhub.oidc.basic_only import plan_basic_only
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from tests.conftest import LiveServer
from tests.oidc_support import basic_header as _basic
from tests.oidc_support import prepare, raw_form_request

LEAN_IP, GENERIC_IP = "10.9.1.1", "10.9.1.2"
NOW = 1_800_000_000.0


def _request(
    form: list[tuple[str, str]], ip: str, *, headers: dict[str, str] | None = None
) -> OAuthRequestData:
    return raw_form_request("/introspect", form, ip, headers=headers)


def _send(
    services: Services, form: list[tuple[str, str]], ip: str, *, lean: bool, **kw: Any
) -> OAuthResponseData:
    introspection = services.introspection
    introspection.enabled = lean
    try:
        return introspection.introspect(_request(form, ip, **kw))
    finally:
        introspection.enabled = True


def _answer(response: OAuthResponseData) -> dict[str, Any]:
    return {"status": response.status, "headers": response.headers, "body": response.body}


def _events(services: Services, ip: str) -> list[dict[str, Any]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events).where(audit_events.c.client_ip == ip).order_by(audit_events.c.seq)
        ).all()
    return [
        {
            "type": row.event_type,
            "actor": (row.actor_type, row.actor_id),
            "target": row.target,
            "outcome": row.outcome,
            "agent": (row.user_agent, row.request_id),
            "details": json.loads(str(row.details)),
        }
        for row in rows
    ]


def _both(services: Services, form: list[tuple[str, str]], **kw: Any) -> dict[str, Any]:
    """Sends `form` down both paths; asserts the answers match and returns the lean one."""
    lean = _answer(_send(services, form, LEAN_IP, lean=True, **kw))
    generic = _answer(_send(services, form, GENERIC_IP, lean=False, **kw))
    assert lean == generic, form
    return lean


def _register(services: Services) -> dict[str, str]:
    prepare(services)
    services.keys.ensure_active(lambda _line: None)
    secrets = {}
    for client_id, kw in {
        "rs": {},
        "other": {},
        "posting": {"token_endpoint_auth_method": "client_secret_post"},
        "gone": {},
    }.items():
        _, secret = services.clients.register(
            client_id, grant_types=["client_credentials"], scope="authz", **kw
        )
        assert secret
        secrets[client_id] = secret
    services.clients.update("gone", disabled=True)
    return secrets


def _token(services: Services, client_id: str, audience: str) -> str:
    client = services.clients.get(client_id)
    assert client is not None
    token, _ = services.access_tokens.issue(
        client, sub=client_id, audience=audience, scopes=["authz"], ttl=600
    )
    return token


@pytest.fixture
def services(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Services:
    return make_services(make_settings(db_url), clock=FrozenClock(NOW))


def test_lean_and_generic_paths_answer_and_record_alike(services: Services) -> None:
    secrets = _register(services)
    auth = {"authorization": _basic("rs", secrets["rs"])}
    own = _token(services, "rs", "idhub")
    addressed = _token(services, "other", "rs")  # addressed to rs
    foreign = _token(services, "other", "idhub")
    revoked = _token(services, "rs", "idhub")
    claims = services.access_tokens.verify_offline(revoked)
    services.token_store.revoke_jti(str(claims["jti"]), expires_at=NOW + 600, now=NOW)
    good = [
        [("token", own)],
        [("token", own), ("token_type_hint", "access_token")],
        [("token", addressed)],
        [("token", own), ("client_id", "rs")],
    ]
    for form in good:
        answer = _both(services, form, headers=auth)
        assert answer["status"] == 200 and answer["body"]["active"] is True, form
    inactive = [
        [("token", foreign)],
        [("token", revoked)],
        [("token", own[:-4] + "AAAA")],  # tampered
        [("token", own), ("token_type_hint", "refresh_token")],
        [("token", "not-a-token")],
    ]
    for form in inactive:
        answer = _both(services, form, headers=auth)
        assert answer["status"] == 200 and answer["body"] == {"active": False}, form
    bad = [
        ([], auth, 400),  # no token
        ([("token", own), ("token", own)], auth, 400),  # repeated parameter
        ([("token", own), ("client_id", "other")], auth, 400),  # two clients named
        ([("token", own), ("client_secret", "x")], auth, 400),  # two methods
        ([("token", own), ("grant_type", "a b")], auth, 400),  # malformed grant_type
        ([("token", own)], {"authorization": _basic("nobody", "x")}, 401),  # unknown client
        (
            [("token", own)],
            {"authorization": _basic("gone", secrets["gone"])},
            401,
        ),  # disabled
        ([("token", own)], {"authorization": _basic("posting", secrets["posting"])}, 401),
        ([("token", own)], {"authorization": "Basic !!!"}, 401),  # unusable Basic
        ([("token", own)], {"authorization": _basic("rs", "")}, 401),  # empty secret
        ([("token", own)], {}, 401),  # no credentials
    ]
    for form, headers, status in bad:
        answer = _both(services, form, headers=headers)
        assert answer["status"] == status, (form, answer)
    # A wrong secret until the client is throttled: the same 401s with WWW-Authenticate, the
    # same refusals, the same throttle events.
    wrong = {"authorization": _basic("rs", "not-the-secret")}
    answers = [_both(services, [("token", own)], headers=wrong) for _ in range(12)]
    assert all(a["status"] == 401 for a in answers)
    assert any(name == "WWW-Authenticate" for name, _ in answers[0]["headers"])
    assert answers[-1]["body"]["error_description"] == "too many failed attempts"
    # Throttled: even the right secret is refused now, on both paths alike.
    assert _both(services, [("token", own)], headers=auth)["status"] == 401
    lean_events = _events(services, LEAN_IP)
    assert lean_events == _events(services, GENERIC_IP)
    kinds = {e["type"] for e in lean_events}
    assert {"token.introspected_inactive", "client.auth_throttled"} <= kinds
    reasons = {e["details"].get("reason") for e in lean_events}
    assert {"revoked", "not addressed to the asking client", "unknown token"} <= reasons


def test_the_common_request_takes_the_lean_path(services: Services) -> None:
    secrets = _register(services)
    auth = {"authorization": _basic("rs", secrets["rs"])}
    token = [("token", "x.y.z")]
    assert plan_basic_only(_request(token, LEAN_IP, headers=auth), services.clients) is not None
    for form, headers in [
        ([("token", "a"), ("token", "b")], auth),
        ([*token, ("client_secret", "x")], auth),
        ([*token, ("client_id", "other")], auth),
        (token, {"authorization": _basic("nobody", "x")}),
        (token, {"authorization": _basic("posting", secrets["posting"])}),
        (token, {"authorization": _basic("rs", secrets["rs"]) + " "}),
        (token, {"Authorization": auth["authorization"]}),
    ]:
        assert plan_basic_only(_request(form, LEAN_IP, headers=headers), services.clients) is None
    refused = _request([*token, ("grant_type", "x")], LEAN_IP, headers=auth)
    assert plan_basic_only(refused, services.clients, refuse=("grant_type",)) is None


def test_lean_path_fails_closed_when_the_audit_trail_is_away(services: Services) -> None:
    """An inactive answer whose event cannot be written is a 503 on both paths."""
    secrets = _register(services)
    auth = {"authorization": _basic("rs", secrets["rs"])}
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
    try:
        answer = _both(services, [("token", "not-a-token")], headers=auth)
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert answer["status"] == 503


def test_introspect_endpoint_serves_through_the_lean_path(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = server.services
    _, secret = services.clients.register("rs", grant_types=["client_credentials"], scope="authz")
    assert secret
    planned: list[bool] = []

    def spy(data: OAuthRequestData, *args: Any, **kw: Any) -> Any:
        found = plan_basic_only(data, *args, **kw)
        planned.append(found is not None)
        return found

    monkeypatch.setattr(introspection_lean, "plan_basic_only", spy)
    token = _token(services, "rs", "idhub")
    answer = httpx.post(server.url + "/introspect", data={"token": token}, auth=("rs", secret))
    assert answer.status_code == 200 and answer.json()["active"] is True
    assert planned == [True]


def test_introspection_reads_revocations_through_the_probe_on_sqlite(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pooled store is not asked on either database (the lean path reads the revocation
    in the throttle's query, tests/test_introspection_one_read.py; the probe where that is
    not taken); a revocation committed by anyone is seen at once."""
    secrets = _register(services)
    auth = {"authorization": _basic("rs", secrets["rs"])}
    token = _token(services, "rs", "idhub")
    store_reads: list[str] = []
    original = services.token_store.is_revoked

    def counted(jti: str) -> bool:
        store_reads.append(jti)
        return original(jti)

    monkeypatch.setattr(services.token_store, "is_revoked", counted)
    first = services.introspection.introspect(_request([("token", token)], LEAN_IP, headers=auth))
    assert first.status == 200 and isinstance(first.body, dict) and first.body["active"] is True
    jti = str(services.access_tokens.verify_offline(token)["jti"])
    services.token_store.revoke_jti(jti, expires_at=NOW + 600, now=NOW)
    second = services.introspection.introspect(_request([("token", token)], LEAN_IP, headers=auth))
    assert second.status == 200 and second.body == {"active": False}
    assert store_reads == []


def test_probing_first_falls_back_to_the_store(services: Services) -> None:
    """The probe's answer when it has one; when it cannot answer (None), the store's."""
    from idhub.oidc.revocations import MirroredRevocations

    services.token_store.revoke_jti("gone", expires_at=NOW + 600, now=NOW)
    answers: dict[str, bool | None] = {}
    mirror = MirroredRevocations(services.token_store, services.clock, probe=answers.get)
    assert mirror.is_revoked_probing_first("gone") is True  # probe silent: the store
    assert mirror.is_revoked_probing_first("kept") is False
    answers.update({"gone": False, "kept": True})
    assert mirror.is_revoked_probing_first("gone") is False  # the probe's word
    assert mirror.is_revoked_probing_first("kept") is True
    without = MirroredRevocations(services.token_store, services.clock)
    assert without.is_revoked_probing_first("gone") is True
