"""LDAP filter injection with every RFC 4515 special (`*`, `(`, `)`, `\\`, NUL) and the
escapes written out (`\\2a`, `\\31` for the last digit of a real uid), at the login form
and at the bind verifier, against the throwaway slapd.

Every attempt carries the right password of a real directory user, so a filter that matched
anyone would sign in: each must fail as an unknown user, with the identical failure page (a
NUL never reaches sign-in through the form: it is a 400 first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest

from idhub.adapters.ldap_auth import LdapBindVerifier
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.errors import AuthenticationFailed
from tests.conftest import LiveServer
from tests.slapd import SOURCE_ENV, USER_PASSWORD, Slapd, source_toml
from tests.sso_support import events, login

pytestmark = pytest.mark.slapd

# Many failures from one test client: the per-address throttle is not what is tested here.
NO_THROTTLE = "\n[throttle]\nip_free = 1000\nip_limit = 2000\n"
USERNAMES = (
    "*",
    "u000001*",
    "*)(uid=*",
    "*)(|(uid=*",
    "u000001)(uid=*)",
    "u000001)(|(objectClass=*)",
    "*)(objectClass=*))(&(uid=u000001",
    "(",
    ")",
    "()",
    "\\",
    "u000001\\",
    "\\2a",
    "u00000\\31",  # `\31` is "1": unescaped, this is the filter (uid=u000001)
    "u00000\\2a",
    "\x00",
    "u000001\x00",
    "u000001\x00)(uid=*",
    "u000001\\00",
    "\\00",
)


@pytest.fixture
def synced(
    slapd_company: Slapd,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
) -> Services:
    settings = make_settings(db_url, toml=source_toml(slapd_company), env=SOURCE_ENV)
    services = make_services(settings)
    services.directory_sync("corp").run()
    return services


def test_filter_specials_match_nobody_at_the_verifier(synced: Services) -> None:
    verifier = synced.password_verifiers["ldap:corp"]
    assert isinstance(verifier, LdapBindVerifier)
    real = synced.identity.get_user_by_username("u000001")
    assert real is not None
    verifier.verify(real, USER_PASSWORD)  # the control: the real name signs in
    for username in USERNAMES:
        with pytest.raises(AuthenticationFailed) as found:
            verifier.find_dn(username, None)
        assert found.value.reason == "unknown_user", username
        someone = replace(real, username=username, external_id=None)
        with pytest.raises(AuthenticationFailed) as bound:
            verifier.verify(someone, USER_PASSWORD)
        assert bound.value.reason == "unknown_user", username


def test_filter_specials_at_the_login_form(
    slapd_company: Slapd,
    make_live_server: Callable[..., LiveServer],
    synced: Services,
    db_url: str,
) -> None:
    server = make_live_server(db_url, toml=source_toml(slapd_company) + NO_THROTTLE, env=SOURCE_ENV)
    with httpx.Client(base_url=server.url, headers={"Accept-Language": "en"}) as client:
        pages = {username: login(client, username, USER_PASSWORD) for username in USERNAMES}
        control = login(client, "u000001", USER_PASSWORD)
    assert control.status_code == 200
    for username, page in pages.items():
        assert "Traceback" not in page.text
        if "\x00" in username:
            # No form field carries a NUL (web/limits.py): refused before sign-in is tried.
            assert page.status_code == 400, (username, page.text[:200])
            assert page.json()["error"] == "invalid_request"
        else:
            assert page.status_code == 401, (username, page.text[:200])
    failed = events(server.services, "login.failed")
    assert len(failed) == len([u for u in USERNAMES if "\x00" not in u])
    assert {e["details"]["reason"] for e in failed} == {"unknown_user"}
    # Nobody signed in but the control.
    assert len(events(server.services, "login.succeeded")) == 1
