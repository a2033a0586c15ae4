"""`SqlTokenStore.rotate` given the family the grant read a moment before (adapters/token_store.py),
on SQLite and PostgreSQL.

The refresh grant reads the token's family with its user before its write section; the
rotation inside that section then trusts it only as far as the database confirms it (the
UPDATE's RETURNING names the token's family): a rotation that wins in it does not read the
family a second time, and a hint that does not match, or a scope beyond it, changes nothing of
what the rotation decides.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from idhub.adapters.unit_of_work import open_unit
from idhub.bootstrap import Services
from idhub.core.token_storage import RefreshFamily, Rotation
from tests.oidc_support import make_user, web_client


@pytest.fixture
def services(services: Services) -> Services:
    web_client(services, "oa")
    return services


def _family(services: Services, name: str) -> tuple[RefreshFamily, str]:
    """A live family of client "oa" with one current token; returns it and the token's hash."""
    user = make_user(services, f"user-{name}", employee_id=f"E-{name}")
    now = time.time()
    family = RefreshFamily(name, "oa", user.id, None, "openid profile", "oa", now, None)
    _, token_hash, _ = services.token_minter.new_refresh_token()
    services.token_store.start_family(
        family, token_hash=token_hash, issued_at=now, expires_at=now + 3600
    )
    return family, token_hash


@contextmanager
def _statements(services: Services) -> Iterator[list[str]]:
    """Inside the unit of work open on this thread: the SQL its connection runs (SQLite's
    trace callback; on PostgreSQL the list stays empty)."""
    unit = open_unit(services.engine)
    assert unit is not None
    seen: list[str] = []
    driver = unit.conn.connection.driver_connection
    if services.engine.dialect.name != "sqlite":
        yield seen
        return
    driver.set_trace_callback(seen.append)  # type: ignore[union-attr]
    try:
        yield seen
    finally:
        driver.set_trace_callback(None)  # type: ignore[union-attr]


def _rotate(services: Services, token_hash: str, **more: Any) -> Rotation:
    _, new_hash, expires_at = services.token_minter.new_refresh_token()
    return services.token_store.rotate(
        token_hash,
        new_hash=new_hash,
        now=time.time(),
        expires_at=expires_at,
        client_id="oa",
        **more,
    )


def _reads_family(statements: list[str]) -> bool:
    return any(
        s.lstrip().upper().startswith("SELECT") and "refresh_families" in s for s in statements
    )


def test_a_rotation_that_wins_in_the_family_read_before_does_not_read_it_again(
    services: Services,
) -> None:
    family, token_hash = _family(services, "f1")
    with services.unit_of_work.atomic(), _statements(services) as statements:
        rotation = _rotate(services, token_hash, family=family)
    assert rotation.status == "ok" and rotation.family == family
    if services.engine.dialect.name == "sqlite":
        assert statements, "the trace saw nothing"
        assert not _reads_family(statements), statements
    # The token was rotated: presenting it again (outside the grace window) is reuse.
    again = _rotate(services, token_hash, family=family)
    assert again.status == "reused"


def test_a_hint_of_another_family_is_not_trusted(services: Services) -> None:
    _, token_hash = _family(services, "real")
    other, _ = _family(services, "other")
    with services.unit_of_work.atomic():
        rotation = _rotate(services, token_hash, family=other)
    assert rotation.status == "ok"
    assert rotation.family is not None and rotation.family.id == "real"


def test_a_hint_does_not_skip_the_scope_check(services: Services) -> None:
    family, token_hash = _family(services, "f2")
    with services.unit_of_work.atomic():
        rotation = _rotate(services, token_hash, family=family, scope=["openid", "admin"])
    assert rotation.status == "invalid_scope"
    # Nothing changed: the token is still current.
    assert _rotate(services, token_hash, family=family).status == "ok"


def test_a_hint_does_not_hide_a_revoked_family(services: Services) -> None:
    family, token_hash = _family(services, "f3")
    services.token_store.revoke_family(family.id, time.time(), "test")
    with services.unit_of_work.atomic():
        rotation = _rotate(services, token_hash, family=family)
    assert rotation.status == "revoked"
