"""SSO session rules (pure) and the session/consent/delivery store on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from idhub.bootstrap import Services
from idhub.core.clock import FrozenClock
from idhub.core.crypto import sha256_hex
from idhub.core.identity import User
from idhub.core.logout import RETRY_DELAYS, retry_delay
from idhub.core.password_policy import PasswordPolicy
from idhub.core.passwords import PasswordHasher
from idhub.core.sessions import SsoSession
from idhub.core.signin import decide_login
from idhub.errors import InvalidInput

NOW = 1_800_000_000.0


def _session(**changes: Any) -> SsoSession:
    values: dict[str, Any] = {
        "sid": "s1",
        "user_id": 1,
        "auth_time": NOW - 100,
        "created_at": NOW - 100,
        "last_seen_at": NOW - 100,
        "expires_at": NOW + 3600,
    }
    values.update(changes)
    return SsoSession(**values)


USER = User(id=1, sub="sub-1", username="alice", email="alice@example.com")


@pytest.mark.parametrize(
    ("session", "user", "kwargs", "expected"),
    [
        (None, None, {}, "no_session"),
        (_session(ended_at=NOW - 1), USER, {}, "no_session"),
        (_session(expires_at=NOW - 1), USER, {}, "no_session"),
        (_session(), User(id=1, sub="s", username="alice", disabled=True), {}, "user_disabled"),
        (_session(), USER, {"prompt": {"login"}}, "prompt_login"),
        (_session(), USER, {"max_age": 60}, "max_age"),
        (_session(), USER, {"max_age": 0}, "max_age"),
        (_session(), USER, {"max_age": 100}, None),
        (_session(), USER, {"login_hint": "bob"}, "login_hint_mismatch"),
        (_session(), USER, {"login_hint": "ALICE@example.com"}, None),
        # Back from the login page for this request: a sign-in after the ticket satisfies all.
        (_session(auth_time=NOW - 5), USER, {"prompt": {"login"}, "fresh_since": NOW - 10}, None),
        (_session(auth_time=NOW - 5), USER, {"max_age": 0, "fresh_since": NOW - 10}, None),
        (
            _session(auth_time=NOW - 50),
            USER,
            {"prompt": {"login"}, "fresh_since": NOW - 10},
            "prompt_login",
        ),
        (_session(), USER, {}, None),
    ],
)
def test_decide_login(
    session: SsoSession | None, user: User | None, kwargs: dict[str, Any], expected: str | None
) -> None:
    args: dict[str, Any] = {
        "prompt": set(),
        "max_age": None,
        "login_hint": None,
        "fresh_since": None,
        "now": NOW,
    }
    args.update(kwargs)
    decision = decide_login(session, user, **args)
    assert decision.needs_login is (expected is not None)
    assert decision.reason == expected


def test_retry_schedule_ends() -> None:
    assert retry_delay(0) == 0.0
    assert [retry_delay(n) for n in range(1, len(RETRY_DELAYS) + 1)] == list(RETRY_DELAYS)
    assert retry_delay(len(RETRY_DELAYS) + 1) is None


def test_passwords_use_owasp_argon2id() -> None:
    hasher = PasswordHasher()
    stored = hasher.hash("ｐａｓｓｗｏｒｄ１２３")  # full-width, as typed with a Chinese IME
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert hasher.check(stored, "password123")  # NFKC: the same password
    assert not hasher.check(stored, "password124")
    assert not hasher.check("not-a-hash", "password123")
    weak = PasswordHasher(time_cost=1, memory_cost=8192)
    assert hasher.needs_rehash(weak.hash("x" * 10)) and not hasher.needs_rehash(stored)
    for bad in ("short", "alice", "abc\x00defgh"):
        with pytest.raises(InvalidInput):
            PasswordPolicy().require_acceptable(
                bad if bad != "alice" else "Alice", username="alice"
            )


def test_weak_hash_is_upgraded_at_sign_in(services: Services) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192)
    user = services.identity.create_user(username="olga", password_hash=weak.hash("olga-pass-1"))
    services.authenticator.authenticate("olga", "olga-pass-1", ctx=None)
    upgraded = services.identity.password_hash(user.id)
    assert upgraded is not None and upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_session_store_lifecycle(
    make_settings: Callable[..., Any], make_services: Callable[..., Services], db_url: str
) -> None:
    clock = FrozenClock(NOW)
    services = make_services(make_settings(db_url), clock=clock)
    alice = services.identity.create_user(username="alice")
    bob = services.identity.create_user(username="bob")
    cookie, session = services.sessions.start(alice, amr=["pwd"])
    assert services.sessions.resolve(cookie) == session
    assert services.sessions.resolve("x" + cookie) is None
    assert services.session_store.by_id_hash(sha256_hex(cookie)) is not None
    # Same person again: new cookie, same sid, new auth_time.
    clock.advance(30)
    cookie2, again = services.sessions.start(alice, amr=["pwd"], previous=session)
    assert again.sid == session.sid and again.auth_time == NOW + 30 and cookie2 != cookie
    assert services.sessions.resolve(cookie) is None
    services.sessions.add_client(session.sid, "oa")
    services.sessions.add_client(session.sid, "oa")
    services.sessions.add_client(session.sid, "reimburse")
    assert services.sessions.clients(session.sid) == ["oa", "reimburse"]
    # Someone else on the same browser never inherits the session.
    _cookie3, other = services.sessions.start(bob, amr=["pwd"], previous=again)
    assert other.sid != session.sid and other.user_id == bob.id
    assert [s.sid for s in services.sessions.active_for_user(alice.id)] == [session.sid]
    # Expiry is absolute.
    clock.advance(services.sessions.ttl + 1)
    assert services.sessions.resolve(cookie2) is None
    assert services.sessions.active_for_user(alice.id) == []
    assert services.sessions.end(session.sid, reason="test")
    assert not services.sessions.end(session.sid, reason="twice")


def test_consents_are_remembered_per_user_and_client(services: Services) -> None:
    store = services.session_store
    alice = services.identity.create_user(username="alice")
    assert store.granted_scopes(alice.id, "vendor") == set()
    store.grant(alice.id, "vendor", ["openid", "profile"], NOW)
    store.grant(alice.id, "vendor", ["email"], NOW + 1)
    assert store.granted_scopes(alice.id, "vendor") == {"openid", "profile", "email"}
    assert store.granted_scopes(alice.id, "other") == set()
    assert store.revoke_consents(alice.id) == 1
    assert store.granted_scopes(alice.id, "vendor") == set()


def test_purge_removes_only_old_finished_sessions(
    make_settings: Callable[..., Any], make_services: Callable[..., Services], db_url: str
) -> None:
    clock = FrozenClock(NOW)
    services = make_services(make_settings(db_url), clock=clock)
    alice = services.identity.create_user(username="alice")
    _c1, old = services.sessions.start(alice, amr=["pwd"])
    services.sessions.add_client(old.sid, "oa")
    services.sessions.end(old.sid, reason="test")
    clock.advance(10)
    cookie, live = services.sessions.start(alice, amr=["pwd"])
    services.sessions.add_client(live.sid, "oa")
    assert services.session_store.purge_ended(NOW + 5) == 1
    assert services.sessions.get(old.sid) is None and services.sessions.clients(old.sid) == []
    assert services.sessions.resolve(cookie) is not None
    assert services.sessions.clients(live.sid) == ["oa"]


def test_old_deliveries_are_purged(services: Services) -> None:
    from idhub.adapters.session_store import SqlDeliveryStore

    store = SqlDeliveryStore(services.engine)
    ids = {
        name: store.queue(client_id=name, sid="s", user_sub="u", uri="http://x/", now=NOW)
        for name in ("done-old", "failed-old", "pending-old")
    }
    store.mark_delivered(ids["done-old"], attempts=1, now=NOW)
    store.mark_failed(ids["failed-old"], attempts=6, error="HTTP 500")
    recent = store.queue(client_id="done-new", sid="s", user_sub="u", uri="http://x/", now=NOW + 50)
    store.mark_delivered(recent, attempts=1, now=NOW + 50)
    assert store.purge(delivered_before=NOW + 10, failed_before=NOW - 10) == 1
    assert store.get(ids["done-old"]) is None
    assert store.get(ids["failed-old"]) is not None  # failed rows are kept longer
    assert store.get(ids["pending-old"]) is not None  # pending rows are never purged
    assert store.purge(delivered_before=NOW + 10, failed_before=NOW + 10) == 1
    assert store.get(ids["failed-old"]) is None and store.get(recent) is not None
