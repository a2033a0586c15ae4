"""The promise of one sign-in for every system, in a real browser (Debian chromium through
Playwright): an OpenID Connect client, a CAS service (python-cas) and a SAML SP (python3-saml)
share one SSO session with a single password prompt, and one logout at idhub reaches all three,
each in its own protocol (back-channel logout token, CAS logoutRequest, SAML LogoutRequest)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.common.security import generate_token
from cas import CASClient

from tests.cas_service import running_cas_service
from tests.conftest import LiveServer, free_port
from tests.rp_app import running_rp
from tests.saml_sp import running_sp
from tests.sso_support import make_user, oauth_client, register_client
from tests.test_browser_login import CHROMIUM, CHROMIUM_ARGS
from tests.test_saml_slo import wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:The httpx module is deprecated"),
]


def test_oidc_cas_and_saml_share_one_password_and_one_logout(
    live_server: LiveServer, known_secrets
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    services, issuer = live_server.services, live_server.url
    carol = make_user(services, "carol", "carol-demo-1", email="carol@example.com")
    known_secrets.add("carol-demo-1")
    port = free_port()
    with running_rp(issuer, port) as rp, running_sp(issuer) as sp, running_cas_service() as cas:
        _, secret = register_client(services, "oa", port=port, backchannel_logout_uri=rp.uri("oa"))
        services.saml_sps.add("erp", metadata_xml=sp.metadata(), domain="erp", first_party=True)
        services.cas_services.register(
            "archive", urls=[cas.service_url], first_party=True, domain="archive"
        )
        cas_client = CASClient(version=3, service_url=cas.service_url, server_url=f"{issuer}/cas/")
        oa = oauth_client(issuer, "oa", secret, port=port)
        oidc_url, _ = oa.create_authorization_url(
            f"{issuer}/authorize", code_verifier=generate_token(48)
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_context(locale="en-US").new_page()
                # 1. SAML, SP-initiated: the only password prompt of the test.
                page.goto(sp.url + "/login")
                assert page.url.startswith(f"{issuer}/login?")
                page.fill("input[name=username]", "carol")
                page.fill("input[name=password]", "carol-demo-1")
                page.click("button[type=submit]")
                page.wait_for_url(sp.url + "/acs")
                verdict = json.loads(page.locator("body").inner_text())
                assert verdict["ok"], verdict
                # 2. CAS: straight back to the service with a ticket, no login page.
                page.goto(cas_client.get_login_url())
                page.wait_for_url(cas.service_url + "?ticket=*")
                ticket = parse_qs(urlsplit(page.url).query)["ticket"][0]
                known_secrets.add(ticket)
                user, attributes, _ = cas_client.verify_ticket(ticket)
                assert user == "carol" and attributes["email"] == "carol@example.com"
                # 3. OIDC: straight back to the client with a code, no login page.
                page.goto(oidc_url)
                page.wait_for_url(f"http://127.0.0.1:{port}/callback?*")
                code = parse_qs(urlsplit(page.url).query)["code"][0]
                known_secrets.add(code)
                # One logout at idhub.
                page.goto(f"{issuer}/logout")
                page.click("button[type=submit]")
                page.wait_for_load_state()
                assert "signed out" in page.locator("p[role=status]").inner_text()
            finally:
                browser.close()
        received = rp.wait_for(1)
        wait_for(lambda: cas.logged_out == [ticket])
        wait_for(lambda: sp.logout_requests)
    assert [r["_client"] for r in received] == ["oa"]
    notice = sp.logout_requests[0]
    assert notice["signed"] and notice["valid"] and notice["name_id"] == verdict["name_id"]
    assert services.sessions.active_for_user(carol.id) == []
