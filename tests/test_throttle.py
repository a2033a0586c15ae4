"""The sign-in throttle without HTTP: per address and per account, on SQLite and PostgreSQL,
with a frozen clock; state shared between two replicas on one database."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, throttle_counters
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import RequestContext
from idhub.core.clock import FrozenClock
from idhub.core.throttle import (
    ACCOUNT,
    IP,
    Counter,
    ThrottleKey,
    ThrottleRule,
    plan_refusal,
    source_of,
)
from idhub.errors import AuthenticationFailed, TooManyAttempts
from tests.sso_support import make_user

NOW = 1_800_000_000.0
ATTACKER = RequestContext(client_ip="203.0.113.66", user_agent="x", request_id="r1234567")
OFFICE = RequestContext(client_ip="198.51.100.10", user_agent="y", request_id="r7654321")


def _ctx(ip: str) -> RequestContext:
    return RequestContext(client_ip=ip, user_agent=None, request_id=None)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def hub(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> Services:
    return make_services(make_settings(db_url), clock=clock)


def _events(services: Services, kind: str) -> list[dict[str, Any]]:
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_events)
            .where(audit_events.c.event_type == kind)
            .order_by(audit_events.c.seq)
        ).all()
    return [{**row._mapping, "details": json.loads(row.details)} for row in rows]


def _try(services: Services, name: str, password: str, ctx: RequestContext) -> str:
    """The outcome of one sign-in: "ok", or the refusal's class and reason."""
    try:
        services.authenticator.authenticate(name, password, ctx=ctx)
    except TooManyAttempts as exc:
        return f"too_many:{exc.reason}"
    except AuthenticationFailed as exc:
        return exc.reason
    return "ok"


def test_rule_gives_free_failures_then_growing_delays_then_a_lock() -> None:
    rule = ThrottleRule(max_failures=8, lock_seconds=600, free_failures=3, delay_max=5)
    assert [rule.plan_delay(n) for n in range(1, 9)] == [0, 0, 0, 1, 2, 4, 5, 0]
    key = ThrottleKey(IP, "192.0.2.1")
    delayed = plan_refusal(Counter(IP, key.value, 5, NOW), rule, NOW + 1)
    assert delayed is not None and not delayed.locked and delayed.retry_after == 1
    assert plan_refusal(Counter(IP, key.value, 5, NOW), rule, NOW + 2) is None
    locked = plan_refusal(Counter(IP, key.value, 8, NOW, NOW + 600), rule, NOW + 100)
    assert locked is not None and locked.locked and locked.retry_after == 500
    # After the lock, or after a quiet window, nothing is refused (the count restarts).
    assert plan_refusal(Counter(IP, key.value, 8, NOW, NOW + 600), rule, NOW + 601) is None
    assert plan_refusal(Counter(IP, key.value, 7, NOW), rule, NOW + rule.window + 1) is None


def test_sources_are_addresses_and_ipv6_counts_per_64() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::9")
    assert source_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("not-an-address") is None and source_of(None) is None


def test_a_locked_account_refuses_the_right_password_and_says_for_how_long(
    hub: Services, clock: FrozenClock
) -> None:
    carol = make_user(hub, "carol", "carol-password-1")
    limit = hub.authenticator.lockout.max_failures
    outcomes = [_try(hub, "carol", "wrong-guess", ATTACKER) for _ in range(limit)]
    assert outcomes == ["bad_password"] * (limit - 1) + ["too_many:bad_password"]
    # The right password now, from anywhere, is refused without being looked at.
    with pytest.raises(TooManyAttempts) as refused:
        hub.authenticator.authenticate("carol", "carol-password-1", ctx=OFFICE)
    assert refused.value.reason == "locked" and refused.value.minutes == 15
    assert hub.identity.get_user(carol.id).is_locked(clock.now())  # type: ignore[union-attr]
    clock.advance(15 * 60 + 1)
    assert _try(hub, "carol", "carol-password-1", OFFICE) == "ok"
    user = hub.identity.get_user(carol.id)
    assert user is not None and user.locked_until is None
    lockouts = _events(hub, "login.lockout")
    assert [e["details"]["scope"] for e in lockouts] == [ACCOUNT]
    assert lockouts[0]["target"] == "carol" and lockouts[0]["client_ip"] == ATTACKER.client_ip


def test_unknown_names_lock_like_accounts_so_a_lock_tells_nothing(hub: Services) -> None:
    make_user(hub, "dave", "dave-password-1")
    limit = hub.authenticator.lockout.max_failures
    real = [_try(hub, "dave", f"guess-{i}", _ctx(f"192.0.2.{i}")) for i in range(limit + 1)]
    fake = [_try(hub, "nobody", f"guess-{i}", _ctx(f"192.0.2.{i}")) for i in range(limit + 1)]
    assert [o.startswith("too_many") for o in real] == [o.startswith("too_many") for o in fake]
    assert real[-1] == fake[-1] == "too_many:locked"
    # The counter of a name that is no account holds a keyed fingerprint, never the name.
    with hub.engine.connect() as conn:
        values = [r.value for r in conn.execute(select(throttle_counters))]
    assert not any("nobody" in v for v in values)
    assert any(v.startswith("name:") for v in values)


def test_spraying_from_one_address_is_stopped_before_accounts_get_locked(
    hub: Services, clock: FrozenClock
) -> None:
    names = [f"user{i:02d}" for i in range(40)]
    for name in names:
        make_user(hub, name, f"{name}-password-1")
    policy = hub.throttle.policy
    outcomes = []
    # Two common passwords against every name, as fast as the attacker can.
    for password in ("Password2024!", "Welcome123!"):
        for name in names:
            outcomes.append(_try(hub, name, password, ATTACKER))
    failed = outcomes.count("bad_password") + sum(o.startswith("too_many:bad") for o in outcomes)
    # Free failures pass, the next ones wait out a delay (refused without counting).
    assert failed == policy.ip.free + 1
    assert all(o == "too_many:throttled" for o in outcomes[failed:])
    assert not any(
        u.is_locked(clock.now()) for u in hub.identity.list_users(limit=100)
    )  # no account locked by the spray
    # The people themselves, from their own addresses, are not affected.
    assert _try(hub, "user01", "user01-password-1", OFFICE) == "ok"
    throttled = _events(hub, "login.throttled")
    assert throttled and {e["details"]["scope"] for e in throttled} == {IP}
    assert all(e["client_ip"] == ATTACKER.client_ip for e in throttled)
    # Keeping on after every delay (a new name each time) ends in a lock of the address.
    for name in names[failed : policy.ip.max_failures]:
        clock.advance(policy.ip.delay_max + 1)
        assert _try(hub, name, "Password2024!", ATTACKER).endswith("bad_password")
    with pytest.raises(TooManyAttempts) as locked:
        hub.authenticator.authenticate("user02", "user02-password-1", ctx=ATTACKER)
    assert locked.value.reason == "throttled" and locked.value.minutes == 15
    assert [e["details"]["scope"] for e in _events(hub, "login.lockout")][-1] == IP
    assert hub.throttle.counts()["locks_ip"] == 1


def test_success_clears_the_account_but_not_the_address(hub: Services) -> None:
    make_user(hub, "erin", "erin-password-1")
    for _ in range(3):
        _try(hub, "erin", "wrong-guess", ATTACKER)
    assert _try(hub, "erin", "erin-password-1", ATTACKER) == "ok"
    with hub.engine.connect() as conn:
        rows = {(r.kind, r.failures) for r in conn.execute(select(throttle_counters))}
    # One good account must not let its owner reset the address and keep guessing elsewhere.
    assert rows == {(IP, 3)}
    # A success with no counter to clear writes nothing to the throttle table.
    before = hub.throttle.counts().get("cleared", 0)
    assert _try(hub, "erin", "erin-password-1", OFFICE) == "ok"
    assert hub.throttle.counts().get("cleared", 0) == before


def test_replicas_share_the_counters(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> None:
    settings = make_settings(db_url)
    one, two = make_services(settings, clock=clock), make_services(settings, clock=clock)
    make_user(one, "frank", "frank-password-1")
    limit = one.authenticator.lockout.max_failures
    for i in range(limit):
        _try(one if i % 2 else two, "frank", "wrong-guess", _ctx(f"192.0.2.{i}"))
    assert _try(one, "frank", "frank-password-1", OFFICE) == "too_many:locked"
    assert _try(two, "frank", "frank-password-1", OFFICE) == "too_many:locked"


def test_throttle_audit_holds_no_typed_name_or_password(hub: Services) -> None:
    for i in range(12):
        _try(hub, "secret-name-typed", "secret-password-typed", ATTACKER)
        _try(hub, f"other-name-{i}", "secret-password-typed", ATTACKER)
    with hub.engine.connect() as conn:
        text = " ".join(f"{r.target} {r.details}" for r in conn.execute(select(audit_events)))
    assert "secret-name-typed" not in text and "secret-password-typed" not in text
    assert "other-name-" not in text
    assert _events(hub, "login.throttled")


def test_the_counter_read_finds_exactly_the_keys_asked_for(hub: Services) -> None:
    """The read before every client authentication is plain driver SQL
    (adapters/driver_read.py): it finds one or several keys, not their neighbours, and
    inside a unit of work it sees that unit's own uncommitted counters."""
    from idhub.adapters.throttle_store import SqlThrottleStore
    from idhub.adapters.unit_of_work import begin

    store = SqlThrottleStore(hub.engine)
    odd = ThrottleKey("client", 'it\'s 100% "odd"@198.51.100.10')
    near = ThrottleKey("client", 'it\'s 100% "odd"@198.51.100.1')
    address = ThrottleKey("client_ip", "198.51.100.10")
    assert store.counters([odd, address]) == []
    store.add_failure(odd, now=NOW, window=60)
    store.add_failure(odd, now=NOW + 1, window=60)
    store.add_failure(address, now=NOW, window=60)
    found = {c.key: c for c in store.counters([odd, address])}
    assert set(found) == {odd, address}
    assert found[odd] == Counter("client", odd.value, 2, NOW + 1, None)
    assert store.counters([near]) == []
    assert store.counters([address]) == [Counter("client_ip", address.value, 1, NOW, None)]
    with begin(hub.engine) as conn:
        conn.execute(
            throttle_counters.insert().values(
                kind="client",
                value=near.value,
                failures=3,
                first_failed_at=NOW,
                last_failed_at=NOW,
                locked_until=NOW + 5,
            )
        )
    assert store.counters([near]) == [Counter("client", near.value, 3, NOW, NOW + 5)]
    with hub.unit_of_work.atomic():
        store.add_failure(address, now=NOW + 2, window=60)
        assert store.counters([address])[0].failures == 2
