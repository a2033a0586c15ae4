"""Code exchanges and refreshes that arrive in one batch (`Provider.token_many`, what the token
endpoint hands over on SQLite) share one unit of work for their write sections
(oidc/grant_batch.py), on SQLite and PostgreSQL.

What these pin: the batch commits once, yet each member is decided exactly as alone - a code
used twice in one batch is a replay that revokes what the first use got, a member refused
inside its write section rolls back its own rotation and event and nobody else's - and when
the shared append fails no member gets a token and nothing was used up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from idhub.bootstrap import Services
from idhub.oidc.messages import OAuthRequestData, OAuthResponseData
from tests.audit_scan import KnownSecrets
from tests.oidc_support import RP, Oidc, form_request, make_user, reply
from tests.test_atomic_audit import events_of, refused, rotated


@pytest.fixture
def oidc(services: Services, known_secrets: KnownSecrets) -> Oidc:
    return Oidc.ready(services, known_secrets)


def _redeem(oidc: Oidc, code: str) -> OAuthRequestData:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": RP}
    return form_request(oidc.services, "/token", form, oidc.secret)


def _refresh(oidc: Oidc, token: str) -> OAuthRequestData:
    form = {"grant_type": "refresh_token", "refresh_token": token}
    return form_request(oidc.services, "/token", form, oidc.secret)


def _issued(oidc: Oidc, known_secrets: KnownSecrets) -> dict[str, Any]:
    body = oidc.tokens()
    known_secrets.add(body["refresh_token"], body["access_token"], body["id_token"])
    return body


def _keep(known_secrets: KnownSecrets, answers: list[OAuthResponseData]) -> None:
    for answer in answers:
        body = reply(answer)
        known_secrets.add(
            *(body[k] for k in ("access_token", "refresh_token", "id_token") if k in body)
        )


@contextmanager
def _commits(services: Services) -> Iterator[list[int]]:
    seen: list[int] = []

    def count(_conn: Any) -> None:
        seen.append(1)

    event.listen(services.engine, "commit", count)
    try:
        yield seen
    finally:
        event.remove(services.engine, "commit", count)


def test_a_batch_of_exchanges_and_refreshes_commits_once(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    earlier = [_issued(oidc, known_secrets) for _ in range(2)]
    codes = [oidc.code() for _ in range(3)]
    batch = [_redeem(oidc, c) for c in codes] + [
        _refresh(oidc, b["refresh_token"]) for b in earlier
    ]
    with _commits(services) as commits:
        answers = services.oidc.token_many(batch)
    _keep(known_secrets, answers)
    assert [a.status for a in answers] == [200] * 5, answers
    # Alone, each of the five used up its code or rotated its token in a commit of its own.
    assert len(commits) == 1
    assert events_of(services, "token.issued") == 2 + 3
    assert events_of(services, "token.refreshed") == 2
    assert all("id_token" in reply(a) for a in answers[:3])
    # What each member got works on its own afterwards.
    for answer in answers:
        again = oidc.refresh(reply(answer)["refresh_token"])
        assert again.status == 200, again
        _keep(known_secrets, [again])


def test_the_same_code_twice_in_one_batch_is_a_replay(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    code = oidc.code()
    first, second = services.oidc.token_many([_redeem(oidc, code), _redeem(oidc, code)])
    _keep(known_secrets, [first])
    assert first.status == 200, first
    assert reply(second)["error"] == "invalid_grant", second
    assert events_of(services, "token.issued") == 1
    # RFC 6749 4.1.2: the replay revokes what the first use got, in the same batch.
    assert reply(oidc.refresh(reply(first)["refresh_token"]))["error"] == "invalid_grant"
    jti = services.access_tokens.verify_offline(reply(first)["access_token"])["jti"]
    assert services.token_store.is_revoked(jti)


def test_a_member_refused_inside_its_write_section_rolls_back_alone(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    mine = _issued(oidc, known_secrets)
    other = Oidc(services, oidc.secret, make_user(services, "lisi"))
    theirs = _issued(other, known_secrets)
    code = other.code()
    # Disabled after the tokens were issued: the refresh finds out inside its write section,
    # after its rotation (reuse detection comes first), which must then roll back.
    services.identity.set_disabled(oidc.user.id, True, reason="left")
    answers = services.oidc.token_many(
        [_refresh(oidc, mine["refresh_token"]), _refresh(other, theirs["refresh_token"]),
         _redeem(other, code)]
    )  # fmt: skip
    refused_, *granted = answers
    _keep(known_secrets, granted)
    assert reply(refused_)["error"] == "invalid_grant", refused_
    assert [a.status for a in granted] == [200, 200], granted
    assert not rotated(oidc, mine["refresh_token"])
    assert rotated(other, theirs["refresh_token"])
    assert events_of(services, "token.refreshed") == 1
    assert events_of(services, "token.issued") == 3
    # Refused, not used up: the token still stands for the user once enabled again.
    services.identity.set_disabled(oidc.user.id, False)
    again = oidc.refresh(mine["refresh_token"])
    assert again.status == 200, again
    _keep(known_secrets, [again])


def test_when_the_shared_append_fails_no_member_gets_a_token(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    earlier = _issued(oidc, known_secrets)
    codes = [oidc.code() for _ in range(2)]
    batch = [_redeem(oidc, c) for c in codes] + [_refresh(oidc, earlier["refresh_token"])]
    with refused(services.engine, "audit_events", "INSERT"):
        failed = services.oidc.token_many(batch)
    assert [a.status for a in failed] == [503] * 3, failed
    assert all("access_token" not in reply(a) for a in failed)
    assert {reply(a)["error"] for a in failed} == {"temporarily_unavailable"}
    assert not rotated(oidc, earlier["refresh_token"])
    # Nothing was used up: the clients' retries work.
    retried = services.oidc.token_many(batch)
    _keep(known_secrets, retried)
    assert [a.status for a in retried] == [200] * 3, retried
    assert events_of(services, "token.issued") == 1 + 2
    assert events_of(services, "token.refreshed") == 1


@contextmanager
def _unit_statements(services: Services) -> Iterator[list[str]]:
    """The SQL run on the connections units of work open meanwhile (SQLite's trace callback:
    the driver-cursor statements SQLAlchemy's events do not see)."""
    seen: list[str] = []
    traced: list[Any] = []

    def trace(conn: Any) -> None:
        driver = conn.connection.driver_connection
        driver.set_trace_callback(seen.append)
        traced.append(driver)

    event.listen(services.engine, "engine_connect", trace)
    try:
        yield seen
    finally:
        event.remove(services.engine, "engine_connect", trace)
        for driver in traced:
            driver.set_trace_callback(None)


def test_a_batch_of_refreshes_does_not_read_their_families_again_in_the_shared_unit(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    if services.engine.dialect.name != "sqlite":
        pytest.skip("the statement trace is SQLite's; PostgreSQL's endpoint does not batch")
    earlier = [_issued(oidc, known_secrets) for _ in range(3)]
    with _unit_statements(services) as statements:
        answers = services.oidc.token_many([_refresh(oidc, b["refresh_token"]) for b in earlier])
    _keep(known_secrets, answers)
    assert [a.status for a in answers] == [200] * 3, answers
    assert sum(s.startswith("UPDATE refresh_tokens") for s in statements) == 3, statements
    # Each family was read with its user before the write section, which every other writer
    # waits for: the rotation that wins does not read it again there.
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert not [s for s in reads if "refresh_families" in s], reads


def test_tokens_are_made_and_sealed_before_the_shared_unit_opens(
    oidc: Oidc, known_secrets: KnownSecrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared unit holds the write lock every other writer waits for: the new refresh
    tokens (random bytes, a keyed hash) and their sealed copies for the grace window are made
    before it opens, not inside a member's write section."""
    from idhub.adapters.unit_of_work import open_unit

    services = oidc.services
    minter = services.token_minter
    inside: list[tuple[str, bool]] = []

    def watched(name: str) -> Any:
        made = getattr(minter, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            inside.append((name, open_unit(services.engine) is not None))
            return made(*args, **kwargs)

        return call

    earlier = [_issued(oidc, known_secrets) for _ in range(2)]
    codes = [oidc.code() for _ in range(2)]
    monkeypatch.setattr(minter, "new_refresh_token", watched("new_refresh_token"))
    monkeypatch.setattr(minter, "seal_successor", watched("seal_successor"))
    answers = services.oidc.token_many(
        [_refresh(oidc, b["refresh_token"]) for b in earlier] + [_redeem(oidc, c) for c in codes]
    )
    _keep(known_secrets, answers)
    assert [a.status for a in answers] == [200] * 4, answers
    assert {name for name, _ in inside} == {"new_refresh_token", "seal_successor"}
    assert not [name for name, opened in inside if opened], inside
