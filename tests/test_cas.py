"""The CAS 3.0 server against the running idhub, driven by the `python-cas` client library:
login through the real /login form, tickets, serviceValidate / p3/serviceValidate with
attributes, JSON, proxy tickets, renew, gateway and single logout received by a tiny service,
plus the refusals (reused ticket, another service, prefix tricks, unknown services)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cas import CASClient, CASClientV3

from tests.audit_scan import KnownSecrets
from tests.cas_service import CasService, running_cas_service
from tests.conftest import LiveServer
from tests.sso_support import events, follow, make_user, query_of, sign_in_at

PASSWORD = "correct horse battery staple"


class ProxyValidator(CASClientV3):
    """python-cas validates at p3/serviceValidate; a proxied back end uses p3/proxyValidate."""

    url_suffix = "p3/proxyValidate"


@pytest.fixture
def cas_service() -> Iterator[CasService]:
    with running_cas_service() as service:
        yield service


@pytest.fixture
def cas_idhub(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str, cas_service: CasService
) -> LiveServer:
    """idhub on SQLite with user alice and the service `oa` registered (first-party)."""
    server = make_live_server(sqlite_db_url)
    _setup(server, cas_service)
    return server


def _setup(server: LiveServer, service: CasService, **kwargs: Any) -> None:
    make_user(
        server.services, "alice", PASSWORD, display_name="Alice Wang", email="alice@example.com",
        employee_id="E1001", department_path="/总部/行政部",
    )  # fmt: skip
    # The policy engine reads the directory when it loads; alice is new.
    server.services.authz.reload(trigger="test")
    options: dict[str, Any] = {"first_party": True, "domain": "oa"}
    options.update(kwargs)
    server.services.cas_services.register("oa", urls=[service.service_url], **options)


def _client(server: LiveServer, service: CasService, **kwargs: Any) -> Any:
    return CASClient(
        version=kwargs.pop("version", 3),
        service_url=kwargs.pop("service_url", service.service_url),
        server_url=f"{server.url}/cas/",
        **kwargs,
    )


def _login(
    browser: httpx.Client, client: Any, known: KnownSecrets, *, password: str | None = PASSWORD
) -> httpx.Response:
    """Opens the service's login URL; signs in on idhub's login page if one appears. Returns the
    response that leaves idhub for the service."""
    known.add(PASSWORD)
    response = follow(browser, client.get_login_url())
    if response.status_code == 200 and 'name="password"' in response.text and password:
        response = sign_in_at(browser, response, "alice", password)
    return response


def _ticket(response: httpx.Response, known: KnownSecrets) -> str:
    assert response.status_code == 302, (response.status_code, response.text[:300])
    ticket = query_of(response.headers["location"])["ticket"]
    known.add(ticket)
    return ticket


def test_login_ticket_and_p3_validation_with_attributes(
    live_server: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    """The core path on both databases: login form -> ST -> p3/serviceValidate with attributes."""
    _setup(live_server, cas_service)
    client = _client(live_server, cas_service)
    with httpx.Client(base_url=live_server.url) as browser:
        response = _login(browser, client, known_secrets)
        location = response.headers["location"]
        assert location.startswith(cas_service.service_url + "?ticket=ST-")
        ticket = _ticket(response, known_secrets)
        assert len(ticket) <= 32
        user, attributes, pgt_iou = client.verify_ticket(ticket)
    assert user == "alice" and pgt_iou is None
    assert attributes["username"] == "alice"
    assert attributes["name"] == "Alice Wang"
    assert attributes["email"] == "alice@example.com"
    assert attributes["employeeNumber"] == "E1001"
    assert attributes["department"] == "/总部/行政部"
    assert "employee" in ([attributes["roles"]] if isinstance(attributes["roles"], str)
                          else attributes["roles"])  # fmt: skip
    assert attributes["isFromNewLogin"] == "true"
    services = live_server.services
    assert [e["target"] for e in events(services, "cas.ticket_issued")] == ["oa"]
    validated = events(services, "cas.ticket_validated")
    assert [e["target"] for e in validated] == ["oa"]
    assert validated[0]["actor_id"] == services.identity.get_user_by_username("alice").sub


def test_sso_second_service_and_versions(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    """A signed-in browser gets tickets without the login page; /validate (1.0) and
    serviceValidate (2.0) answer too, and JSON when asked."""
    with httpx.Client(base_url=cas_idhub.url) as browser:
        _ticket(_login(browser, _client(cas_idhub, cas_service), known_secrets), known_secrets)
        v1 = _client(cas_idhub, cas_service, version=1)
        ticket = _ticket(follow(browser, v1.get_login_url()), known_secrets)
        assert v1.verify_ticket(ticket) == ("alice", None, None)
        v2 = _client(cas_idhub, cas_service, version=2)
        ticket = _ticket(follow(browser, v2.get_login_url()), known_secrets)
        user, attributes, _ = v2.verify_ticket(ticket)
        assert user == "alice" and attributes is None  # attributes are protocol 3.0's
        ticket = _ticket(follow(browser, v2.get_login_url()), known_secrets)
    answer = httpx.get(
        f"{cas_idhub.url}/cas/p3/serviceValidate",
        params={"ticket": ticket, "service": cas_service.service_url, "format": "JSON"},
    ).json()
    success = answer["serviceResponse"]["authenticationSuccess"]
    assert success["user"] == "alice" and success["attributes"]["email"] == ["alice@example.com"]
    again = httpx.get(
        f"{cas_idhub.url}/cas/p3/serviceValidate",
        params={"ticket": ticket, "service": cas_service.service_url, "format": "JSON"},
    ).json()
    assert again["serviceResponse"]["authenticationFailure"]["code"] == "INVALID_TICKET"


def test_reused_and_foreign_tickets_are_refused(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    cas_idhub.services.cas_services.register(
        "reimburse", urls=["http://127.0.0.1:9/reimburse/"], first_party=True
    )
    client = _client(cas_idhub, cas_service)
    with httpx.Client(base_url=cas_idhub.url) as browser:
        ticket = _ticket(_login(browser, client, known_secrets), known_secrets)
        assert client.verify_ticket(ticket)[0] == "alice"
        assert client.verify_ticket(ticket)[0] is None  # single use
        ticket = _ticket(follow(browser, client.get_login_url()), known_secrets)
        other = _client(cas_idhub, cas_service, service_url="http://127.0.0.1:9/reimburse/")
        assert other.verify_ticket(ticket)[0] is None  # bound to the service it was issued for
        assert client.verify_ticket(ticket)[0] is None  # and spent by the failed attempt
        ticket = _ticket(follow(browser, client.get_login_url()), known_secrets)
    time.sleep(0)
    forged = httpx.get(
        f"{cas_idhub.url}/cas/serviceValidate",
        params={"ticket": "ST-" + "A" * 27, "service": cas_service.service_url},
    )
    assert 'code="INVALID_TICKET"' in forged.text
    bad_spec = httpx.get(
        f"{cas_idhub.url}/cas/serviceValidate",
        params={"ticket": "XX-123", "service": cas_service.service_url},
    )
    assert 'code="INVALID_TICKET_SPEC"' in bad_spec.text
    missing = httpx.get(f"{cas_idhub.url}/cas/serviceValidate", params={"ticket": ticket})
    assert 'code="INVALID_REQUEST"' in missing.text
    rejected = events(cas_idhub.services, "cas.ticket_rejected")
    codes = [e["details"]["error"] for e in rejected]
    assert codes == ["INVALID_TICKET", "INVALID_SERVICE", "INVALID_TICKET", "INVALID_TICKET",
                     "INVALID_TICKET_SPEC", "INVALID_REQUEST"]  # fmt: skip


@pytest.mark.parametrize(
    "service_url",
    [
        "https://oa.example.com.evil/app/",
        "https://oa.example.com@evil.example/app/",
        "https://evil.example/?https://oa.example.com/app/",
        "http://oa.example.com/app/",
        "https://oa.example.com:8443/app/",
        "https://oa.example.com/application/",
        "https://oa.example.com/app/../admin/",
        "https://oa.example.com/app/#frag",
        "not a url",
    ],
)
def test_service_prefix_tricks_get_an_error_page_and_no_redirect(
    cas_idhub: LiveServer, service_url: str
) -> None:
    cas_idhub.services.cas_services.register(
        "secure-oa", urls=["https://oa.example.com/app/"], first_party=True
    )
    with httpx.Client(base_url=cas_idhub.url) as browser:
        response = browser.get("/cas/login", params={"service": service_url})
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "INVALID_SERVICE" in response.text


def test_matching_rules_accept_paths_below_and_any_query_order(cas_idhub: LiveServer) -> None:
    registry = cas_idhub.services.cas_services
    registry.register("q", urls=["https://q.example.com/cas?b=2&a=1"], first_party=True)
    registry.register("p", urls=["https://P.example.com:443/oa"], first_party=True)
    assert registry.find("https://q.example.com/cas?a=1&b=2") is not None
    assert registry.find("https://q.example.com/cas?a=1") is None
    assert registry.find("https://p.example.com/oa/login.jsp?gopage=x") is not None
    assert registry.find("https://p.example.com/oa") is not None
    assert registry.find("https://p.example.com/oa-evil") is None


def test_gateway_without_session_returns_without_ticket(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    client = _client(cas_idhub, cas_service, extra_login_params={"gateway": "true"})
    with httpx.Client(base_url=cas_idhub.url) as browser:
        response = follow(browser, client.get_login_url())
        assert response.status_code == 302
        assert response.headers["location"] == cas_service.service_url
        signed_in = _login(browser, _client(cas_idhub, cas_service), known_secrets)
        _ticket(signed_in, known_secrets)
        # With a session, gateway gets a ticket without any page.
        ticket = _ticket(follow(browser, client.get_login_url()), known_secrets)
        assert client.verify_ticket(ticket)[0] == "alice"


def test_renew_forces_the_login_page_and_marks_the_ticket(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    plain = _client(cas_idhub, cas_service)
    renew = _client(cas_idhub, cas_service, renew=True)
    with httpx.Client(base_url=cas_idhub.url) as browser:
        _ticket(_login(browser, plain, known_secrets), known_secrets)
        reused = _ticket(follow(browser, plain.get_login_url()), known_secrets)
        page = follow(browser, renew.get_login_url())
        assert page.status_code == 200 and 'name="password"' in page.text
        fresh = _ticket(sign_in_at(browser, page, "alice", PASSWORD), known_secrets)
    # renew=true on validation refuses a ticket that came from the existing session ...
    answer = httpx.get(
        f"{cas_idhub.url}/cas/p3/serviceValidate",
        params={"ticket": reused, "service": cas_service.service_url, "renew": "true"},
    )
    assert 'code="INVALID_TICKET_SPEC"' in answer.text
    # ... and accepts the one issued right after the password was typed again.
    user, attributes, _ = renew.verify_ticket(fresh)
    assert user == "alice" and attributes["isFromNewLogin"] == "true"


def test_consent_for_a_third_party_service(
    make_live_server: Callable[..., LiveServer],
    sqlite_db_url: str,
    cas_service: CasService,
    known_secrets: KnownSecrets,
) -> None:
    from tests.sso_support import csrf_token, hidden_fields

    server = make_live_server(sqlite_db_url)
    _setup(server, cas_service, first_party=False, attributes=["username", "email"])
    client = _client(server, cas_service)
    with httpx.Client(base_url=server.url) as browser:
        page = _login(browser, client, known_secrets)
        assert page.status_code == 200 and 'action="/cas/login"' in page.text, page.text[:300]
        fields = hidden_fields(page.text)
        fields.update({"csrf_token": csrf_token(page.text), "idhub_consent": "allow"})
        ticket = _ticket(browser.post("/cas/login", data=fields), known_secrets)
        user, attributes, _ = client.verify_ticket(ticket)
        assert user == "alice"
        released = set(attributes) - {
            "authenticationDate", "isFromNewLogin", "longTermAuthenticationRequestTokenUsed"
        }  # fmt: skip
        assert released == {"username", "email"}
        # Remembered: the next sign-in goes straight through.
        _ticket(follow(browser, client.get_login_url()), known_secrets)


def test_proxy_granting_and_proxy_tickets(
    make_live_server: Callable[..., LiveServer],
    sqlite_db_url: str,
    cas_service: CasService,
    known_secrets: KnownSecrets,
) -> None:
    server = make_live_server(sqlite_db_url)
    _setup(server, cas_service, proxy_callbacks=[cas_service.callback_url])
    server.services.cas_services.register(
        "archive", urls=[f"{cas_service.url}/archive/"], first_party=True
    )
    portal = _client(server, cas_service, proxy_callback=cas_service.callback_url)
    with httpx.Client(base_url=server.url) as browser:
        ticket = _ticket(_login(browser, portal, known_secrets), known_secrets)
    user, _, pgt_iou = portal.verify_ticket(ticket)
    assert user == "alice" and pgt_iou.startswith("PGTIOU-")
    pgt = cas_service.pgts[pgt_iou]
    assert pgt.startswith("PGT-")
    known_secrets.add(pgt, pgt_iou)
    back_end = f"{cas_service.url}/archive/"
    proxy_client = _client(server, cas_service, service_url=back_end)
    proxy_ticket = proxy_client.get_proxy_ticket(pgt)
    known_secrets.add(proxy_ticket)
    assert proxy_ticket.startswith("PT-")
    # serviceValidate never accepts a proxy ticket; proxyValidate does, naming the proxy.
    assert proxy_client.verify_ticket(proxy_client.get_proxy_ticket(pgt))[0] is None
    validator = ProxyValidator(service_url=back_end, server_url=f"{server.url}/cas/")
    response = validator.get_verification_response(proxy_ticket)
    assert b"<cas:proxy>" + cas_service.callback_url.encode() + b"</cas:proxy>" in response
    assert validator.verify_response(response)[0] == "alice"
    # A proxy may only ask for registered services.
    refused = httpx.get(
        f"{server.url}/cas/proxy", params={"pgt": pgt, "targetService": "https://evil.example/"}
    )
    assert '<cas:proxyFailure code="UNAUTHORIZED_SERVICE">' in refused.text


def test_pgt_url_must_be_registered(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    portal = _client(cas_idhub, cas_service, proxy_callback=cas_service.callback_url)
    with httpx.Client(base_url=cas_idhub.url) as browser:
        ticket = _ticket(_login(browser, portal, known_secrets), known_secrets)
    response = portal.get_verification_response(ticket)
    assert b'code="UNAUTHORIZED_SERVICE_PROXY"' in response
    assert cas_service.pgts == {}


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_single_logout_reaches_the_service(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    """/cas/logout ends the SSO session; the service receives a logoutRequest naming the very
    ticket it was given (python-cas verifies it), and /cas/logout redirects to it."""
    client = _client(cas_idhub, cas_service)
    with httpx.Client(base_url=cas_idhub.url) as browser:
        ticket = _ticket(_login(browser, client, known_secrets), known_secrets)
        assert client.verify_ticket(ticket)[0] == "alice"
        out = browser.get(client.get_logout_url(cas_service.service_url))
        assert out.status_code == 302 and out.headers["location"] == cas_service.service_url
        # The session is gone: the next login shows the login page.
        assert 'name="password"' in follow(browser, client.get_login_url()).text
    assert _wait(lambda: cas_service.logged_out == [ticket])
    assert _wait(lambda: bool(events(cas_idhub.services, "logout.backchannel_delivered")))
    delivered = events(cas_idhub.services, "logout.backchannel_delivered")
    assert [(e["target"], e["details"]["protocol"]) for e in delivered] == [("oa", "cas")]
    logout = events(cas_idhub.services, "session.logout")
    assert logout[-1]["details"]["initiator"] == "oa"


def test_admin_session_revoke_reaches_the_service(
    cas_idhub: LiveServer,
    cas_service: CasService,
    known_secrets: KnownSecrets,
    run_cli: Callable[..., Any],
    tmp_path: Any,
) -> None:
    from tests.sso_support import cli_config_for

    client = _client(cas_idhub, cas_service)
    with httpx.Client(base_url=cas_idhub.url) as browser:
        ticket = _ticket(_login(browser, client, known_secrets), known_secrets)
    config = cli_config_for(tmp_path, cas_idhub.settings.database.url)
    result = run_cli("session", "revoke", "--user", "alice", config=config)
    assert result.code == 0, result.err
    cas_idhub.services.runtime.wake("logout-delivery")
    assert _wait(lambda: cas_service.logged_out == [ticket])


def test_unknown_service_logout_does_not_redirect(cas_idhub: LiveServer) -> None:
    response = httpx.get(f"{cas_idhub.url}/cas/logout", params={"service": "https://evil.example/"})
    assert response.status_code == 200 and "location" not in response.headers


def test_post_method_answers_with_a_form(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    client = _client(cas_idhub, cas_service, extra_login_params={"method": "POST"})
    with httpx.Client(base_url=cas_idhub.url) as browser:
        _ticket(_login(browser, _client(cas_idhub, cas_service), known_secrets), known_secrets)
        page = follow(browser, client.get_login_url())
    assert page.status_code == 200
    assert f'action="{cas_service.service_url}"' in page.text
    assert 'name="ticket" value="ST-' in page.text


def test_expired_ticket_is_refused(
    make_live_server: Callable[..., LiveServer],
    sqlite_db_url: str,
    cas_service: CasService,
    known_secrets: KnownSecrets,
) -> None:
    server = make_live_server(sqlite_db_url, toml="[cas]\nticket_ttl = 1\n")
    _setup(server, cas_service)
    client = _client(server, cas_service)
    with httpx.Client(base_url=server.url) as browser:
        ticket = _ticket(_login(browser, client, known_secrets), known_secrets)
    time.sleep(1.2)
    assert client.verify_ticket(ticket)[0] is None


def test_one_sign_in_and_one_logout_for_an_oidc_client_and_a_cas_service(
    cas_idhub: LiveServer, cas_service: CasService, known_secrets: KnownSecrets
) -> None:
    """The CAS service and an OIDC client share the SSO session: no second password prompt,
    and one CAS logout reaches the OIDC client's back channel as well as the CAS service."""
    from tests.conftest import free_port
    from tests.rp_app import running_rp
    from tests.sso_support import register_client

    with running_rp(cas_idhub.url, free_port()) as rp:
        register_client(cas_idhub.services, "reimburse", backchannel_logout_uri=rp.uri("reimburse"))
        client = _client(cas_idhub, cas_service)
        with httpx.Client(base_url=cas_idhub.url) as browser:
            ticket = _ticket(_login(browser, client, known_secrets), known_secrets)
            authorize = browser.get(
                "/authorize",
                params={
                    "client_id": "reimburse", "response_type": "code", "scope": "openid",
                    "redirect_uri": "http://127.0.0.1:8001/callback", "state": "s",
                    "code_challenge": "E9Melhoe2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                    "code_challenge_method": "S256",
                },
            )  # fmt: skip
            assert authorize.status_code == 302, authorize.text[:300]
            known_secrets.add(query_of(authorize.headers["location"])["code"])
            assert browser.get("/cas/logout").status_code == 200
        assert _wait(lambda: cas_service.logged_out == [ticket])
        assert _wait(lambda: [r["_client"] for r in rp.received] == ["reimburse"])


def test_a_replica_validates_what_another_issued(
    make_live_server: Callable[..., LiveServer],
    db_url: str,
    cas_service: CasService,
    known_secrets: KnownSecrets,
) -> None:
    """Two idhub processes on one database behind one name: the ticket issued by one is
    validated by the other, once."""
    first = make_live_server(db_url)
    second = make_live_server(db_url, issuer=first.url)
    _setup(first, cas_service)
    with httpx.Client(base_url=first.url) as browser:
        ticket = _ticket(_login(browser, _client(first, cas_service), known_secrets), known_secrets)
    at_second = _client(second, cas_service)
    user, attributes, _ = at_second.verify_ticket(ticket)
    assert user == "alice" and attributes["email"] == "alice@example.com"
    assert _client(first, cas_service).verify_ticket(ticket)[0] is None


@pytest.mark.parametrize(
    ("pattern", "url", "expected"),
    [
        ("https://oa.example.com/", "https://OA.example.com:443/any/page?x=1", True),
        ("https://oa.example.com/oa", "https://oa.example.com/oa/", True),
        ("https://oa.example.com/oa/", "https://oa.example.com/oa", False),
        ("https://oa.example.com/oa", "https://oa.example.com/oa-evil", False),
        ("https://oa.example.com", "https://oa.example.com.evil", False),
        ("https://oa.example.com", "https://oa.example.com@evil.example", False),
        ("https://oa.example.com/", "https://oa.example.com/%2e%2e/admin", False),
        ("http://oa.example.com/", "https://oa.example.com/", False),
        ("https://oa.example.com/a?x=1&y=2", "https://oa.example.com/a?y=2&x=1", True),
        ("https://oa.example.com/a?x=1", "https://oa.example.com/a?x=1&y=2", False),
    ],
)
def test_service_matching_rule(pattern: str, url: str, expected: bool) -> None:
    from idhub.cas.services import check_service_match

    assert check_service_match(pattern, url) is expected
