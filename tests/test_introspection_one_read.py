"""An introspection of a well-formed access token reads the client's throttle counters and
the token's revocation in one statement (oidc/introspection_lean.py, adapters/
throttle_store.py `counters_and_revoked`), and answers as the two reads did: a revocation is
seen on the very next request, a throttled client gets the same refusal and learns nothing
of the token, a disabled client's token goes inactive. On both databases."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.clock import FrozenClock
from idhub.core.throttle import CLIENT, CLIENT_IP, ThrottleKey
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from tests.oidc_support import basic_header, prepare, raw_form_request

NOW = 1_800_000_000.0
IP = "10.9.2.1"


@pytest.fixture
def services(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Services:
    services = make_services(make_settings(db_url), clock=FrozenClock(NOW))
    prepare(services)
    return services


def _client(services: Services, client_id: str) -> str:
    _, secret = services.clients.register(
        client_id, grant_types=["client_credentials"], scope="authz"
    )
    assert secret
    return secret


def _token(services: Services, client_id: str, *, audience: str = "idhub") -> str:
    client = services.clients.get(client_id)
    assert client is not None
    token, _ = services.access_tokens.issue(
        client, sub=client_id, audience=audience, scopes=["authz"], ttl=600
    )
    return token


def _ask(services: Services, token: str, auth: str, ip: str = IP) -> OAuthResponseData:
    data: OAuthRequestData = raw_form_request(
        "/introspect", [("token", token)], ip, headers={"authorization": auth}
    )
    return services.introspection.introspect(data)


def _reasons(services: Services, ip: str = IP) -> list[tuple[str, str | None]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events.c.event_type, audit_events.c.details)
            .where(audit_events.c.client_ip == ip)
            .order_by(audit_events.c.seq)
        ).all()
    return [(str(kind), json.loads(str(details)).get("reason")) for kind, details in rows]


def test_counters_and_revoked_answers_as_the_two_reads(services: Services) -> None:
    store = services.throttle_store
    keys = (ThrottleKey(CLIENT_IP, IP), ThrottleKey(CLIENT, f"rs@{IP}"))
    assert store.counters_and_revoked(keys, "j1") == ([], False)
    store.add_failure(keys[1], now=NOW, window=900)
    services.token_store.revoke_jti("j1", expires_at=NOW + 600, now=NOW)
    counters, revoked = store.counters_and_revoked(keys, "j1")
    assert counters == store.counters(keys) and len(counters) == 1
    assert revoked is True and services.token_store.is_revoked("j1")
    assert store.counters_and_revoked(keys, "j2") == (store.counters(keys), False)
    assert store.counters_and_revoked((), "j1") == ([], True)  # no keys: the list alone


def test_one_read_per_introspection(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _client(services, "rs")
    auth = basic_header("rs", secret)
    token = _token(services, "rs")
    store = services.throttle_store
    calls: list[str] = []
    fetch = store._fetch

    def counted_fetch(sql: str, params: list[str]) -> list[Any]:
        calls.append("read")
        return fetch(sql, params)

    def refuse(name: str) -> Callable[..., Any]:
        def asked(*args: Any) -> Any:
            calls.append(name)
            raise AssertionError(name)

        return asked

    monkeypatch.setattr(store, "_fetch", counted_fetch)
    monkeypatch.setattr(store, "counters", refuse("counters"))
    monkeypatch.setattr(services.token_store, "is_revoked", refuse("is_revoked"))
    monkeypatch.setattr(services.revocations, "_probe", refuse("probe"))
    answer = _ask(services, token, auth)
    assert answer.status == 200 and isinstance(answer.body, dict)
    assert answer.body["active"] is True
    assert calls == ["read"]


def test_a_revocation_is_seen_on_the_very_next_request(services: Services) -> None:
    secret = _client(services, "rs")
    auth = basic_header("rs", secret)
    token = _token(services, "rs")
    for _ in range(3):  # answered (and its body encoded) more than once
        first = _ask(services, token, auth)
        assert isinstance(first.body, dict) and first.body["active"] is True
    jti = str(services.access_tokens.verify_offline(token)["jti"])
    services.token_store.revoke_jti(jti, expires_at=NOW + 600, now=NOW)
    second = _ask(services, token, auth)
    assert second.status == 200 and second.body == {"active": False}
    assert second.json_bytes() == b'{"active":false}'
    assert _reasons(services) == [("token.introspected_inactive", "revoked")]


def test_a_disabled_clients_token_goes_inactive(services: Services) -> None:
    secret = _client(services, "rs")
    _client(services, "issuer")
    auth = basic_header("rs", secret)
    token = _token(services, "issuer", audience="rs")  # addressed to rs
    for _ in range(2):
        answer = _ask(services, token, auth)
        assert isinstance(answer.body, dict) and answer.body["active"] is True
    services.clients.update("issuer", disabled=True)
    assert _ask(services, token, auth).body == {"active": False}
    assert _reasons(services) == [
        ("token.introspected_inactive", "the token's client is disabled or removed")
    ]


def test_a_throttled_client_gets_the_same_refusal(services: Services) -> None:
    secret = _client(services, "rs")
    auth = basic_header("rs", secret)
    wrong = basic_header("rs", "not-the-secret")
    token = _token(services, "rs")
    answers = [_ask(services, token, wrong) for _ in range(12)]
    assert [a.status for a in answers] == [401] * 12
    refused = _ask(services, token, auth)  # the right secret, a valid token: still refused
    assert refused.status == 401 and isinstance(refused.body, dict)
    assert refused.body["error"] == "invalid_client"
    assert refused.body["error_description"] == "too many failed attempts"
    assert "active" not in refused.body
    # The same refusal as for a request naming no token at all.
    garbage = _ask(services, "not-a-token", auth)
    assert (garbage.status, garbage.headers, garbage.body) == (
        refused.status,
        refused.headers,
        refused.body,
    )
    kinds = [kind for kind, _ in _reasons(services)]
    assert kinds[-2:] == ["client.auth_throttled", "client.auth_throttled"]
    assert "token.introspected_inactive" not in kinds


def test_an_active_answer_is_encoded_once_per_token(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes are what encoding the body gives, asked again and again; every check still
    runs: a client the token does not concern learns nothing from the kept answer."""
    from idhub.oidc import introspection
    from idhub.oidc.messages import encode_json

    secret = _client(services, "rs")
    other = basic_header("other", _client(services, "other"))
    auth = basic_header("rs", secret)
    token, second = _token(services, "rs"), _token(services, "rs")
    encoded: list[dict[str, Any]] = []

    def counted(body: dict[str, Any]) -> bytes:
        encoded.append(body)
        return encode_json(body)

    monkeypatch.setattr(introspection, "encode_json", counted)
    answers = [_ask(services, token, auth) for _ in range(3)]
    for answer in answers:
        assert isinstance(answer.body, dict) and answer.body["active"] is True
        assert answer.json_bytes() == encode_json(answer.body)
    assert answers[1].body == answers[0].body and answers[1].body is not answers[0].body
    assert len(encoded) == 1
    assert _ask(services, second, auth).body != answers[0].body  # its own answer
    assert len(encoded) == 2
    assert _ask(services, token, other).body == {"active": False}  # not addressed to it
    assert _reasons(services) == [
        ("token.introspected_inactive", "not addressed to the asking client")
    ]
