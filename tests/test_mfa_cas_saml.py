"""Per-system `require_mfa` for CAS services and SAML SPs, like OIDC clients: over HTTP with
the python-cas client and the python3-saml SP, pyotp as the authenticator app. A system that
requires a second factor gets it asked for at sign-in, and a browser whose session holds only
a password is asked for the factor (not the password again, and not sent round in a loop)
before the system gets its ticket or assertion; a system that does not require one does not
cause it to be asked."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import httpx
import pyotp
import pytest
from cas import CASClient

from idhub.core.identity import User
from tests.audit_scan import KnownSecrets
from tests.cas_service import CasService, running_cas_service
from tests.conftest import LiveServer
from tests.saml_sp import SamlSp, auto_post, running_sp
from tests.sso_support import hidden_fields, make_user, post_login

PASSWORD = "alice-demo-1"


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    return live


@pytest.fixture
def alice(idhub: LiveServer, known_secrets: KnownSecrets) -> tuple[User, pyotp.TOTP]:
    """alice has an authenticator app (TOTP) enrolled."""
    services = idhub.services
    user = make_user(services, "alice", PASSWORD, email="alice@example.com")
    known_secrets.add(PASSWORD)
    enrolment = services.mfa.begin_totp(user)
    known_secrets.add(enrolment.secret)
    totp = pyotp.TOTP(enrolment.secret)
    assert services.mfa.confirm_totp(user, totp.at(services.clock.now() - 30), ctx=None)
    return user, totp


@pytest.fixture
def bob(idhub: LiveServer, known_secrets: KnownSecrets) -> User:
    """bob has no second factor, and nothing but a system obliges him to have one."""
    known_secrets.add(PASSWORD)
    return make_user(idhub.services, "bob", PASSWORD, email="bob@example.com")


@pytest.fixture
def cas_services() -> Iterator[tuple[CasService, CasService]]:
    with running_cas_service() as strict, running_cas_service() as plain:
        yield strict, plain


def _follow(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    """Follows redirects inside idhub; stops at a page or at a redirect leaving idhub."""
    base = str(client.base_url)
    while response.status_code in (302, 303):
        target = urljoin(str(response.url), response.headers["location"])
        if not target.startswith(base):
            return response
        response = client.get(target)
    return response


def _second_factor(
    client: httpx.Client, page: httpx.Response, totp: pyotp.TOTP, known: KnownSecrets
) -> httpx.Response:
    assert page.status_code == 200 and 'id="totp-form"' in page.text, page.text[:400]
    assert 'name="password"' not in page.text
    start = page.text.index('id="totp-form"')
    fields = hidden_fields(page.text[start : page.text.index("</form>", start)])
    code = totp.now()
    known.add(code)
    return client.post("/login/second-factor", data={**fields, "answer": code})


def _enrolment_asked(page: httpx.Response, back_to: str) -> None:
    """The login page sends the person to enrol a factor, to come back to `back_to` after."""
    assert page.status_code == 303, (page.status_code, page.text[:300])
    location = httpx.URL(page.headers["location"])
    assert location.path == "/account/security" and location.params["required"] == "1"
    assert location.params["return_to"].startswith(back_to)


def _cas_client(idhub: LiveServer, service: CasService) -> CASClient:
    return CASClient(version=3, service_url=service.service_url, server_url=f"{idhub.url}/cas/")


def test_a_cas_service_requiring_mfa_asks_for_the_factor_and_then_validates(
    idhub: LiveServer,
    alice: tuple[User, pyotp.TOTP],
    cas_services: tuple[CasService, CasService],
    known_secrets: KnownSecrets,
) -> None:
    _, totp = alice
    strict, plain = cas_services
    registry = idhub.services.cas_services
    registry.register("strict", urls=[strict.service_url], first_party=True, require_mfa=True)
    registry.register("plain", urls=[plain.service_url], first_party=True)
    assert idhub.services.signin_factors.system_requires("strict", "cas")
    assert not idhub.services.signin_factors.system_requires("plain", "cas")
    # Another front's registry does not lend its flag to a system of the same name.
    assert not idhub.services.signin_factors.system_requires("strict", "oidc")
    client = _cas_client(idhub, strict)
    with httpx.Client(base_url=idhub.url) as browser:
        page = _follow(browser, browser.get(client.get_login_url()))
        assert 'name="password"' in page.text
        step = post_login(browser, page, "alice", PASSWORD)
        leaving = _follow(browser, _second_factor(browser, step, totp, known_secrets))
    assert leaving.status_code == 302 and "ticket=ST-" in leaving.headers["location"]
    ticket = httpx.URL(leaving.headers["location"]).params["ticket"]
    known_secrets.add(ticket)
    user, attributes, _ = client.verify_ticket(ticket)
    assert user == "alice" and attributes["isFromNewLogin"] == "true"


def test_without_a_factor_a_cas_service_requiring_mfa_sends_the_person_to_enrol(
    idhub: LiveServer,
    bob: User,
    cas_services: tuple[CasService, CasService],
    known_secrets: KnownSecrets,
) -> None:
    """The login page knows which CAS service it signs in for: the person is sent to enrol a
    factor instead of round and round between /cas/login and the password form."""
    strict, plain = cas_services
    registry = idhub.services.cas_services
    registry.register("strict", urls=[strict.service_url], first_party=True, require_mfa=True)
    registry.register("plain", urls=[plain.service_url], first_party=True)
    with httpx.Client(base_url=idhub.url) as browser:
        # The plain service: the password alone, straight back with a ticket.
        page = _follow(browser, browser.get(_cas_client(idhub, plain).get_login_url()))
        back = _follow(browser, post_login(browser, page, "bob", PASSWORD))
        assert back.status_code == 302 and "ticket=ST-" in back.headers["location"]
        known_secrets.add(httpx.URL(back.headers["location"]).params["ticket"])
        # The strict one, with the same (password-only) session: enrol first.
        start = browser.get(_cas_client(idhub, strict).get_login_url())
        assert start.status_code == 303 and start.headers["location"].startswith("/login")
        _enrolment_asked(browser.get(start.headers["location"]), "/cas/login")
        # Signing in afresh at that service asks for enrolment too, not the service.
        browser.cookies.clear()
        page = _follow(browser, browser.get(_cas_client(idhub, strict).get_login_url()))
        _enrolment_asked(post_login(browser, page, "bob", PASSWORD), "/cas/login")


@pytest.fixture
def sps(idhub: LiveServer) -> Iterator[tuple[SamlSp, SamlSp]]:
    with running_sp(idhub.url) as strict, running_sp(idhub.url, entity_path="/plain") as plain:
        idhub.services.saml_sps.add(
            "strict", metadata_xml=strict.metadata(), domain="erp", first_party=True,
            require_mfa=True,
        )  # fmt: skip
        idhub.services.saml_sps.add(
            "plain", metadata_xml=plain.metadata(), domain="erp", first_party=True
        )
        yield strict, plain


def test_a_saml_sp_requiring_mfa_asks_for_the_factor_and_another_does_not(
    idhub: LiveServer,
    bob: User,
    alice: tuple[User, pyotp.TOTP],
    sps: tuple[SamlSp, SamlSp],
    known_secrets: KnownSecrets,
) -> None:
    _, totp = alice
    strict, plain = sps
    assert idhub.services.signin_factors.system_requires("strict", "saml")
    assert not idhub.services.signin_factors.system_requires("plain", "saml")
    with httpx.Client(base_url=idhub.url) as browser:
        # bob, without a factor: the plain SP gets its assertion after the password ...
        page = _follow(browser, browser.get(plain.login_url()))
        signed_in = _follow(browser, post_login(browser, page, "bob", PASSWORD))
        assert plain.consume(auto_post(signed_in.text)[1])["ok"]
        # ... the strict one sends him to enrol (the login page found the SP's name in
        # the sealed AuthnRequest of its return path).
        start = browser.get(strict.login_url())
        assert start.status_code == 303 and start.headers["location"].startswith("/login")
        _enrolment_asked(browser.get(start.headers["location"]), "/saml/sso")
    with httpx.Client(base_url=idhub.url) as browser:
        # alice, with a factor: password, code, then the strict SP's assertion.
        page = _follow(browser, browser.get(strict.login_url()))
        step = post_login(browser, page, "alice", PASSWORD)
        answered = _follow(browser, _second_factor(browser, step, totp, known_secrets))
        action, fields = auto_post(answered.text)
        assert html.unescape(action) == strict.url + "/acs"
        verdict = strict.consume(fields)
    assert verdict["ok"], verdict
