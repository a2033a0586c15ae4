"""The refresh rotation grace window (`[tokens] refresh_reuse_grace`), on SQLite and PostgreSQL.

Within the window, the client that rotated a refresh token and presents it again (a retry
after a lost answer, two tabs refreshing at once) gets the same successor back instead of
having its family revoked. Outside the window, after the successor was used, for another
client, or with the window set to 0, reuse still revokes the family."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from idhub.adapters.db import audit_events, refresh_families
from idhub.adapters.token_store import SEALED_SUCCESSOR_KEEP
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.clock import FrozenClock
from idhub.oidc.messages import OAuthResponseData
from tests.audit_scan import KnownSecrets
from tests.oidc_support import Oidc, reply, web_client


def _oidc(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
    toml: str = "",
) -> tuple[Oidc, FrozenClock]:
    clock = FrozenClock()
    services = make_services(make_settings(db_url, toml=toml), clock=clock)
    return Oidc.ready(services, known_secrets), clock


@pytest.fixture
def graced(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
) -> tuple[Oidc, FrozenClock]:
    return _oidc(make_settings, make_services, db_url, known_secrets)  # the default window


def _ok(answer: OAuthResponseData, known_secrets: KnownSecrets) -> dict[str, Any]:
    assert answer.status == 200, answer
    body = reply(answer)
    known_secrets.add(body["refresh_token"], body["access_token"])
    return body


def _count(services: Services, query: Any) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _revoked(services: Services) -> int:
    return _count(services, select(func.count()).where(refresh_families.c.revoked_at.is_not(None)))


def _events(services: Services, event_type: str) -> int:
    return _count(
        services,
        select(func.count()).where(audit_events.c.event_type == event_type),
    )


def test_a_retry_within_the_window_gets_the_same_successor(
    graced: tuple[Oidc, FrozenClock], known_secrets: KnownSecrets
) -> None:
    oidc, clock = graced
    first = _ok(oidc.redeem(oidc.code()), known_secrets)
    second = _ok(oidc.refresh(first["refresh_token"]), known_secrets)
    clock.advance(2)
    again = _ok(oidc.refresh(first["refresh_token"]), known_secrets)
    assert again["refresh_token"] == second["refresh_token"]
    assert again["access_token"] != second["access_token"]  # an equivalent, fresh one
    assert _revoked(oidc.services) == 0
    assert _events(oidc.services, "token.refresh_reuse_detected") == 0
    # The successor stays the one current token of the family.
    third = _ok(oidc.refresh(second["refresh_token"]), known_secrets)
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    retried = [e for e in oidc.services.audit_log.search() if e.details.get("grace_retry") is True]
    assert len(retried) == 1 and retried[0].event_type == "token.refreshed"


def test_reuse_after_the_window_or_after_the_successor_was_used_revokes(
    graced: tuple[Oidc, FrozenClock], known_secrets: KnownSecrets
) -> None:
    oidc, clock = graced
    first = _ok(oidc.redeem(oidc.code()), known_secrets)
    _ok(oidc.refresh(first["refresh_token"]), known_secrets)
    clock.advance(oidc.services.settings.tokens.refresh_reuse_grace + 0.5)
    late = oidc.refresh(first["refresh_token"])
    assert reply(late)["error"] == "invalid_grant"
    assert _revoked(oidc.services) == 1

    fresh = _ok(oidc.redeem(oidc.code()), known_secrets)
    successor = _ok(oidc.refresh(fresh["refresh_token"]), known_secrets)
    _ok(oidc.refresh(successor["refresh_token"]), known_secrets)  # the client moved on
    replay = oidc.refresh(fresh["refresh_token"])  # within the window, but a replay now
    assert reply(replay)["error"] == "invalid_grant"
    assert _revoked(oidc.services) == 2
    assert _events(oidc.services, "token.refresh_reuse_detected") == 2


def test_another_client_gets_nothing_within_the_window(
    graced: tuple[Oidc, FrozenClock], known_secrets: KnownSecrets
) -> None:
    oidc, _ = graced
    first = _ok(oidc.redeem(oidc.code()), known_secrets)
    second = _ok(oidc.refresh(first["refresh_token"]), known_secrets)
    _, other_secret = web_client(oidc.services, "reimburse")
    assert other_secret is not None
    known_secrets.add(other_secret)
    thief = Oidc(oidc.services, str(other_secret), oidc.user, client_id="reimburse")
    stolen = thief.refresh(first["refresh_token"])
    assert reply(stolen)["error"] == "invalid_grant"
    assert "refresh_token" not in reply(stolen)
    # The owner's successor is untouched.
    _ok(oidc.refresh(second["refresh_token"]), known_secrets)


def test_a_window_of_zero_revokes_at_once(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
) -> None:
    oidc, _ = _oidc(
        make_settings, make_services, db_url, known_secrets, "[tokens]\nrefresh_reuse_grace = 0\n"
    )
    first = _ok(oidc.redeem(oidc.code()), known_secrets)
    _ok(oidc.refresh(first["refresh_token"]), known_secrets)
    assert reply(oidc.refresh(first["refresh_token"]))["error"] == "invalid_grant"
    assert _revoked(oidc.services) == 1
    with oidc.services.engine.connect() as conn:
        # Nothing usable is kept when the window is off.
        sealed = conn.exec_driver_sql(
            "SELECT count(*) FROM refresh_tokens WHERE successor_sealed IS NOT NULL"
        ).scalar_one()
    assert sealed == 0


def test_two_concurrent_refreshes_both_get_the_one_successor(
    graced: tuple[Oidc, FrozenClock], known_secrets: KnownSecrets
) -> None:
    oidc, _ = graced
    first = _ok(oidc.redeem(oidc.code()), known_secrets)
    start = threading.Barrier(2)
    answers: list[OAuthResponseData] = []

    def tab() -> None:
        start.wait(10)
        answers.append(oidc.refresh(first["refresh_token"]))

    tabs = [threading.Thread(target=tab) for _ in range(2)]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(30)
    bodies = [_ok(answer, known_secrets) for answer in answers]
    assert len(bodies) == 2
    assert bodies[0]["refresh_token"] == bodies[1]["refresh_token"]
    assert _revoked(oidc.services) == 0
    assert _events(oidc.services, "token.refreshed") == 2
    _ok(oidc.refresh(bodies[0]["refresh_token"]), known_secrets)


def test_the_window_is_bounded(make_settings: Callable[..., Settings], db_url: str) -> None:
    from idhub.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        make_settings(db_url, toml="[tokens]\nrefresh_reuse_grace = 600\n")
    assert "refresh_reuse_grace must be between 0 and 60" in str(exc.value)


def test_housekeeping_drops_the_sealed_successor_after_a_while(
    graced: tuple[Oidc, FrozenClock], known_secrets: KnownSecrets
) -> None:
    oidc, clock = graced
    first = _ok(oidc.redeem(oidc.code()), known_secrets)
    _ok(oidc.refresh(first["refresh_token"]), known_secrets)
    sealed = "SELECT count(*) FROM refresh_tokens WHERE successor_sealed IS NOT NULL"
    with oidc.services.engine.connect() as conn:
        assert conn.exec_driver_sql(sealed).scalar_one() == 1
    oidc.services.token_housekeeping.purge_once()
    with oidc.services.engine.connect() as conn:
        assert conn.exec_driver_sql(sealed).scalar_one() == 1  # still inside its keep time
    clock.advance(SEALED_SUCCESSOR_KEEP + 1)
    oidc.services.token_housekeeping.purge_once()
    with oidc.services.engine.connect() as conn:
        assert conn.exec_driver_sql(sealed).scalar_one() == 0
    # Without the sealed copy a late presentation is reuse, as after any window.
    assert reply(oidc.refresh(first["refresh_token"]))["error"] == "invalid_grant"
