"""Token formats without HTTP: logout tokens, id_token_hint decoding, access-token checks
that depend on time (an injected clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from joserfc import jwk, jwt

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.clock import FrozenClock
from idhub.oidc.tokens import BACKCHANNEL_EVENT, AccessTokens, InvalidToken
from tests.oidc_support import make_user, prepare, web_client


@pytest.fixture
def clocked(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> tuple[Services, FrozenClock]:
    clock = FrozenClock()
    services = make_services(make_settings(db_url), clock=clock)
    prepare(services)
    return services, clock


def _keyset(services: Services) -> jwk.KeySet:
    return jwk.KeySet.import_key_set(services.keys.jwks())


def test_logout_token(clocked: tuple[Services, FrozenClock]) -> None:
    services, clock = clocked
    client, _ = web_client(services, "oa", backchannel_logout_uri="http://127.0.0.1:9/bc")
    token = services.id_tokens.sign_logout_token(client, sub="subject-1", sid="sid-1")
    decoded = jwt.decode(token, _keyset(services), algorithms=["RS256"])
    assert decoded.header["typ"] == "logout+jwt"
    claims = decoded.claims
    assert claims["aud"] == "oa" and claims["sub"] == "subject-1" and claims["sid"] == "sid-1"
    assert claims["events"] == {BACKCHANNEL_EVENT: {}} and "nonce" not in claims
    assert claims["iat"] == int(clock.now()) and claims["exp"] > claims["iat"] and claims["jti"]
    again = services.id_tokens.sign_logout_token(client, sub="subject-1", sid=None)
    assert "sid" not in jwt.decode(again, _keyset(services), algorithms=["RS256"]).claims


def test_id_token_hint_is_accepted_after_expiry_but_not_forged(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, clock = clocked
    client, _ = web_client(services, "oa")
    user = make_user(services)
    id_token = services.id_tokens.sign_id_token(client, claims={"sub": user.sub}, sid="sid-7")
    clock.advance(3600)
    claims = services.id_tokens.decode_id_token_hint(id_token)
    assert claims is not None and claims["sid"] == "sid-7" and claims["aud"] == "oa"
    forged = jwt.encode(
        {"alg": "ES256", "kid": "x"},
        {"iss": services.settings.server.issuer, "sub": user.sub},
        jwk.generate_key("EC", "P-256"),
    )
    assert services.id_tokens.decode_id_token_hint(forged) is None
    access, _ = services.access_tokens.issue(client, sub=user.sub, audience="oa", scopes=["openid"])
    assert services.id_tokens.decode_id_token_hint(access) is None
    assert services.id_tokens.decode_id_token_hint("garbage") is None


def test_access_token_time_and_audience(clocked: tuple[Services, FrozenClock]) -> None:
    services, clock = clocked
    client, _ = web_client(services, "oa")
    token, claims = services.access_tokens.issue(client, sub="s", audience="oa", scopes=["x"])
    assert services.access_tokens.verify(token, audience="oa")["jti"] == claims["jti"]
    with pytest.raises(InvalidToken):
        services.access_tokens.verify(token, audience="reimburse")
    clock.advance(services.settings.tokens.access_token_ttl + 1)
    with pytest.raises(InvalidToken) as exc:
        services.access_tokens.verify(token)
    assert exc.value.reason == "expired"
    future, _ = services.access_tokens.issue(client, sub="s", audience="oa", scopes=["x"])
    clock.advance(-120)
    with pytest.raises(InvalidToken):
        services.access_tokens.verify(future)


def test_housekeeping_drops_only_what_can_no_longer_matter(
    clocked: tuple[Services, FrozenClock],
) -> None:
    from sqlalchemy import func, select

    from idhub.adapters.db import refresh_families, refresh_tokens, revoked_tokens, used_assertions
    from idhub.core.token_storage import RefreshFamily
    from tests.oidc_support import issue_code

    services, clock = clocked
    store = services.token_store
    web_client(services, "oa")
    user = make_user(services)
    issue_code(services, "oa", user)
    now = clock.now()
    for name, ttl in (("old", 60.0), ("live", 10 * 86400.0)):
        _, token_hash, _ = services.token_minter.new_refresh_token()
        store.start_family(
            RefreshFamily(name, "oa", user.id, None, "openid", "oa", now, None),
            token_hash=token_hash,
            issued_at=now,
            expires_at=now + ttl,
        )
    store.revoke_jti("j1", expires_at=now + 60, now=now)
    store.revoke_jti("j2", expires_at=now + 10 * 86400, now=now)
    assert store.use_assertion("oa", "a1", expires_at=now + 60)
    clock.advance(2 * 86400)
    removed = services.token_housekeeping.purge_once()
    assert removed == {
        "codes": 1,
        "refresh_tokens": 1,
        "refresh_families": 1,
        "revoked_tokens": 1,
        "used_assertions": 1,
    }
    with services.engine.connect() as conn:
        assert conn.execute(select(refresh_families.c.id)).scalars().all() == ["live"]
        assert conn.execute(select(func.count()).select_from(refresh_tokens)).scalar_one() == 1
        assert conn.execute(select(revoked_tokens.c.jti)).scalars().all() == ["j2"]
        assert conn.execute(select(func.count()).select_from(used_assertions)).scalar_one() == 0
    assert store.is_revoked("j2") and not store.is_revoked("j1")


# ------------------------------------------------------- verification without waiting
# `verify_without_waiting` is the event loop's check (the decision API): it reads the one
# cache of signature-checked tokens, and answers only when no step could block.


def _revoke(services: Services, token: str) -> None:
    claims = services.access_tokens.verify_offline(token)
    services.token_store.revoke_jti(
        str(claims["jti"]), expires_at=float(claims["exp"]), now=services.clock.now()
    )


def test_an_unchecked_token_must_wait_and_a_checked_one_is_answered(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, _clock = clocked
    client, _ = web_client(services, "oa")
    token, claims = services.access_tokens.issue(client, sub="s", audience="oa", scopes=["x"])
    assert services.access_tokens.verify_without_waiting(token, audience="oa") is None
    services.access_tokens.verify(token, audience="oa")
    answered = services.access_tokens.verify_without_waiting(token, audience="oa")
    if services.engine.dialect.name == "sqlite":
        assert answered is not None and answered["jti"] == claims["jti"]
    else:  # no read of PostgreSQL's revocation list can be had without a round trip
        assert answered is None
    with pytest.raises(InvalidToken) as exc:
        services.access_tokens.verify_without_waiting(token, audience="reimburse")
    assert exc.value.reason == "wrong audience"


def test_a_revocation_is_seen_without_waiting_on_the_next_use(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, _clock = clocked
    client, _ = web_client(services, "oa")
    token, _ = services.access_tokens.issue(client, sub="s", audience="oa", scopes=["x"])
    services.access_tokens.verify(token, audience="oa")
    _revoke(services, token)
    if services.engine.dialect.name == "sqlite":
        with pytest.raises(InvalidToken) as exc:
            services.access_tokens.verify_without_waiting(token, audience="oa")
        assert exc.value.reason == "revoked"
    else:
        assert services.access_tokens.verify_without_waiting(token, audience="oa") is None
    with pytest.raises(InvalidToken):  # and the thread's check agrees
        services.access_tokens.verify(token, audience="oa")


def test_a_checked_token_is_refused_without_waiting_at_its_exp(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, clock = clocked
    client, _ = web_client(services, "oa")
    token, claims = services.access_tokens.issue(client, sub="s", audience="oa", scopes=["x"])
    services.access_tokens.verify_offline(token)
    clock.advance(claims["exp"] - clock.now())  # exp itself is expired, as `verify` has it
    with pytest.raises(InvalidToken) as exc:
        services.access_tokens.verify_without_waiting(token)
    assert exc.value.reason == "expired"


class _Revocations:
    """A revocation list whose event-loop answer the test sets."""

    def __init__(self) -> None:
        self.without_waiting: bool | None = False

    def is_revoked(self, jti: str) -> bool:
        return False

    def is_revoked_without_waiting(self, jti: str) -> bool | None:
        return self.without_waiting


def _tokens(services: Services, revocations: _Revocations, **kwargs: int) -> AccessTokens:
    return AccessTokens(
        services.keys,
        revocations,
        issuer=services.access_tokens.issuer,
        clock=services.clock,
        ttl=300,
        **kwargs,
    )


def test_a_revocation_list_that_cannot_answer_now_means_must_wait(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, _clock = clocked
    client, _ = web_client(services, "oa")
    revocations = _Revocations()
    tokens = _tokens(services, revocations)
    token, _ = tokens.issue(client, sub="s", audience="oa", scopes=["x"])
    tokens.verify(token)
    assert tokens.verify_without_waiting(token) is not None
    revocations.without_waiting = None
    assert tokens.verify_without_waiting(token) is None
    revocations.without_waiting = True
    with pytest.raises(InvalidToken):
        tokens.verify_without_waiting(token)


def test_the_verified_cache_is_bounded_and_holds_no_token(
    clocked: tuple[Services, FrozenClock],
) -> None:
    services, _clock = clocked
    client, _ = web_client(services, "oa")
    tokens = _tokens(services, _Revocations(), verified_limit=3)
    issued = [tokens.issue(client, sub="s", audience="oa", scopes=["x"])[0] for _ in range(10)]
    for token in issued:
        tokens.verify_offline(token)
    assert len(tokens._verified) <= 3
    assert not any(
        token.encode() in key or key in token.encode()
        for token in issued
        for key in tokens._verified
    )
    assert tokens.verify_without_waiting(issued[-1]) is not None
    assert tokens.verify_without_waiting(issued[0]) is None  # forgotten: checked again
