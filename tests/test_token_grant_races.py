"""The code exchange and the refresh grant under racing requests, and the user they mint for,
on SQLite and PostgreSQL.

The code exchange reads the code with its user in one statement and uses the code up with one
conditional UPDATE; the refresh grant reads the family with its user before its rotation. These
tests pin what that must keep: a code is used once however many requests race for it (and the
race counts as reuse, revoking what the winner got), a refresh token rotates once and its
replay revokes the family, and a user disabled a moment ago gets nothing, with no memory of
their row in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from idhub.adapters.db import audit_events, refresh_families
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.oidc.messages import OAuthResponseData
from tests.audit_scan import KnownSecrets
from tests.oidc_support import Oidc, reply

RACERS = 6


def _oidc(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
    toml: str = "",
) -> Oidc:
    services = make_services(make_settings(db_url, toml=toml))
    return Oidc.ready(services, known_secrets)


def _race(call: Callable[[], OAuthResponseData]) -> list[OAuthResponseData]:
    start = threading.Barrier(RACERS)
    answers: list[OAuthResponseData] = []
    lock = threading.Lock()

    def racer() -> None:
        start.wait(10)
        answer = call()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=racer) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == RACERS
    return answers


def _count(services: Services, query: Any) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _events(services: Services, event_type: str) -> int:
    return _count(services, select(func.count()).where(audit_events.c.event_type == event_type))


def _revoked_families(services: Services) -> int:
    return _count(services, select(func.count()).where(refresh_families.c.revoked_at.is_not(None)))


def test_a_code_raced_for_is_used_once_and_the_race_revokes_the_grant(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
) -> None:
    oidc = _oidc(make_settings, make_services, db_url, known_secrets)
    code = oidc.code()
    answers = _race(lambda: oidc.redeem(code))
    won = [reply(a) for a in answers if a.status == 200]
    lost = [reply(a) for a in answers if a.status != 200]
    assert len(won) == 1, answers
    known_secrets.add(won[0]["refresh_token"], won[0]["access_token"], won[0]["id_token"])
    assert {body["error"] for body in lost} == {"invalid_grant"}
    services = oidc.services
    assert _events(services, "token.issued") == 1
    # Presenting a used code is reuse (RFC 6749 4.1.2): what the winner got is revoked.
    assert _revoked_families(services) == 1
    assert reply(oidc.refresh(won[0]["refresh_token"]))["error"] == "invalid_grant"
    jti = services.access_tokens.verify_offline(won[0]["access_token"])["jti"]
    assert services.token_store.is_revoked(jti)


def test_a_refresh_token_raced_for_rotates_once_and_its_replay_revokes_the_family(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
) -> None:
    oidc = _oidc(
        make_settings, make_services, db_url, known_secrets, "[tokens]\nrefresh_reuse_grace = 0\n"
    )
    first = oidc.tokens()
    known_secrets.add(first["refresh_token"], first["access_token"], first["id_token"])
    answers = _race(lambda: oidc.refresh(first["refresh_token"]))
    won = [reply(a) for a in answers if a.status == 200]
    lost = [reply(a) for a in answers if a.status != 200]
    assert len(won) == 1, answers
    known_secrets.add(won[0]["refresh_token"], won[0]["access_token"])
    assert {body["error"] for body in lost} == {"invalid_grant"}
    services = oidc.services
    assert _events(services, "token.refreshed") == 1
    assert _events(services, "token.refresh_reuse_detected") >= 1
    assert _revoked_families(services) == 1
    # The winner's successor went with its family.
    assert reply(oidc.refresh(won[0]["refresh_token"]))["error"] == "invalid_grant"


def test_a_user_disabled_a_moment_ago_gets_no_token(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    known_secrets: KnownSecrets,
) -> None:
    oidc = _oidc(make_settings, make_services, db_url, known_secrets)
    first = oidc.tokens()  # the issuer has just read the user's row
    known_secrets.add(first["refresh_token"], first["access_token"], first["id_token"])
    code = oidc.code()
    services = oidc.services
    services.identity.set_disabled(oidc.user.id, True, reason="left")
    refused = reply(oidc.refresh(first["refresh_token"]))
    assert refused["error"] == "invalid_grant", refused
    refused = reply(oidc.redeem(code))
    assert refused["error"] == "invalid_grant", refused
    assert _events(services, "token.refreshed") == 0
    assert _events(services, "token.issued") == 1
    # Refused, not used up: the refresh token and the code still stand for an enabled user.
    services.identity.set_disabled(oidc.user.id, False)
    again = oidc.refresh(first["refresh_token"])
    assert again.status == 200, again
    known_secrets.add(reply(again)["refresh_token"], reply(again)["access_token"])
    redeemed = oidc.redeem(code)
    assert redeemed.status == 200, redeemed
    body = reply(redeemed)
    known_secrets.add(body["refresh_token"], body["access_token"], body["id_token"])
