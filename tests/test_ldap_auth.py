"""LDAP sign-in: the bind verifier and the real login page, against a real slapd."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events
from idhub.adapters.ldap_auth import LdapBindVerifier
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.identity import User
from idhub.errors import AuthenticationFailed, DirectoryUnavailable
from tests.conftest import LiveServer
from tests.slapd import SOURCE_ENV, USER_PASSWORD, Slapd, source_toml
from tests.sso_support import events, login, make_user

pytestmark = pytest.mark.slapd


@pytest.fixture
def synced(
    slapd_company: Slapd,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
) -> Services:
    """Services over a database already holding the company (read-only slapd)."""
    settings = make_settings(db_url, toml=source_toml(slapd_company), env=SOURCE_ENV)
    services = make_services(settings)
    services.directory_sync("corp").run()
    return services


def _verifier(services: Services) -> LdapBindVerifier:
    verifier = services.password_verifiers["ldap:corp"]
    assert isinstance(verifier, LdapBindVerifier)
    return verifier


def _user(services: Services, username: str) -> User:
    user = services.identity.get_user_by_username(username)
    assert user is not None
    return user


def _reason(call: Callable[[], Any]) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        call()
    return info.value.reason


def test_bind_verifier_checks_the_password_in_ldap(synced: Services) -> None:
    verifier = _verifier(synced)
    user = _user(synced, "u000001")
    verifier.verify(user, USER_PASSWORD)
    verifier.verify(user, USER_PASSWORD)  # again, through the pooled connections
    assert _reason(lambda: verifier.verify(user, "wrong password")) == "bad_password"
    # An empty password would be an "unauthenticated bind" that LDAP reports as success.
    assert _reason(lambda: verifier.verify(user, "")) == "bad_password"
    # Disabled in idhub: refused whatever the directory says.
    disabled = replace(user, disabled=True)
    assert _reason(lambda: verifier.verify(disabled, USER_PASSWORD)) == "disabled"


@pytest.mark.parametrize("username", ["*)(uid=*", "*", "u00000*", "u000001)(|(uid=*", "\\2a"])
def test_filter_injection_matches_nobody(synced: Services, username: str) -> None:
    verifier = _verifier(synced)
    assert _reason(lambda: verifier.find_dn(username, None)) == "unknown_user"
    someone = replace(_user(synced, "u000001"), username=username, external_id=None)
    assert _reason(lambda: verifier.verify(someone, USER_PASSWORD)) == "unknown_user"


def test_a_recycled_username_cannot_reach_another_account(synced: Services) -> None:
    verifier = _verifier(synced)
    a, b = _user(synced, "u000001"), _user(synced, "u000002")
    # An idhub account whose stable id is not the entry found under that name is refused.
    impostor = replace(a, external_id=b.external_id)
    assert _reason(lambda: verifier.verify(impostor, USER_PASSWORD)) == "unknown_user"


def test_ldap_user_signs_in_through_the_login_page(
    slapd_company: Slapd,
    make_live_server: Callable[..., LiveServer],
    synced: Services,
    db_url: str,
) -> None:
    server = make_live_server(db_url, toml=source_toml(slapd_company), env=SOURCE_ENV)
    services = server.services
    person = next(p for p in slapd_company.company.people if not p.disabled)  # type: ignore[attr-defined]
    disabled = next(p for p in slapd_company.company.people if p.disabled)  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.url, headers={"Accept-Language": "en"}) as client:
        ok = login(client, person.uid, USER_PASSWORD)
        assert ok.status_code == 200, ok.text
        assert person.name in ok.text
    with httpx.Client(base_url=server.url, headers={"Accept-Language": "en"}) as client:
        wrong = login(client, person.uid, "not-the-password")
        injected = login(client, "*)(uid=*", USER_PASSWORD)
        # LDAP would accept this bind (slapd enforces no lock here); idhub refuses.
        blocked = login(client, disabled.uid, USER_PASSWORD)
    assert wrong.status_code == injected.status_code == blocked.status_code == 401
    succeeded = events(services, "login.succeeded")
    assert succeeded[-1]["details"]["source"] == "ldap:corp"
    reasons = [e["details"]["reason"] for e in events(services, "login.failed")]
    assert reasons[-3:] == ["bad_password", "unknown_user", "disabled"]
    with services.engine.connect() as conn:
        details = " ".join(r.details for r in conn.execute(select(audit_events)))
    assert USER_PASSWORD not in details and "not-the-password" not in details


def test_directory_down_during_sign_in_says_so_and_local_users_still_sign_in(
    make_slapd: Callable[..., Slapd],
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    make_live_server: Callable[..., LiveServer],
    db_url: str,
) -> None:
    ldap = make_slapd(users=12, departments=4, groups=2)
    toml = source_toml(ldap)
    make_services(make_settings(db_url, toml=toml, env=SOURCE_ENV)).directory_sync("corp").run()
    server = make_live_server(db_url, toml=toml, env=SOURCE_ENV)
    make_user(server.services, "local.admin", "local-password-1")
    ldap.stop()
    with httpx.Client(base_url=server.url, headers={"Accept-Language": "en"}) as client:
        started = time.monotonic()
        down = login(client, "u000001", USER_PASSWORD)
        took = time.monotonic() - started
        local = login(client, "local.admin", "local-password-1")
    assert down.status_code == 503
    assert "The directory is unreachable, please try again later." in down.text
    assert took < 8, "connect timeout must bound the wait"
    assert local.status_code == 200
    verifier = server.services.password_verifiers["ldap:corp"]
    user = server.services.identity.get_user_by_username("u000001")
    assert user is not None
    with pytest.raises(DirectoryUnavailable):
        verifier.verify(user, USER_PASSWORD)
    reasons = [e["details"]["reason"] for e in events(server.services, "login.failed")]
    assert "directory_unreachable" in reasons


@pytest.mark.parametrize("mode", ["ldaps", "starttls"])
def test_tls_with_a_ca_file(
    slapd_company: Slapd,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    mode: str,
) -> None:
    assert slapd_company.tls is not None
    if mode == "ldaps":
        extra = f'ca_file = "{slapd_company.tls.ca}"'
        toml = source_toml(slapd_company, extra=extra).replace(
            slapd_company.url, slapd_company.ldaps_url
        )
    else:
        toml = source_toml(
            slapd_company, extra=f'start_tls = true\nca_file = "{slapd_company.tls.ca}"'
        )
    services = make_services(make_settings(sqlite_db_url, toml=toml, env=SOURCE_ENV))
    report = services.directory_sync("corp").run()
    assert report.counts["create"] == len(slapd_company.company.people)  # type: ignore[attr-defined]
    _verifier(services).verify(_user(services, "u000001"), USER_PASSWORD)


def test_tls_refuses_an_unknown_ca(
    slapd_company: Slapd,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    tmp_path: Any,
) -> None:
    from tests.slapd import make_tls

    other = make_tls(tmp_path)  # a different CA that did not sign the server's certificate
    toml = source_toml(slapd_company, extra=f'ca_file = "{other.ca}"').replace(
        slapd_company.url, slapd_company.ldaps_url
    )
    services = make_services(make_settings(sqlite_db_url, toml=toml, env=SOURCE_ENV))
    from idhub.errors import DirectoryError

    with pytest.raises(DirectoryError):
        services.directory_sync("corp").run()
