"""SAML in a real browser: Debian chromium (Playwright) starts at the SP (python3-saml), signs in
on idhub's login page, and the auto-posted response is validated by the SP. The same browser
then signs in to an OpenID Connect client without a second password, and one logout at idhub
reaches both (OIDC back-channel logout token, SAML LogoutRequest)."""

from __future__ import annotations

import json

import pytest
from authlib.common.security import generate_token

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


def test_saml_and_oidc_with_one_password_and_one_logout_in_chromium(
    live_server: LiveServer,
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    services, issuer = live_server.services, live_server.url
    carol = make_user(services, "carol", "carol-demo-1", email="carol@example.com")
    port = free_port()
    with running_rp(issuer, port) as rp, running_sp(issuer) as sp:
        _, secret = register_client(services, "oa", port=port, backchannel_logout_uri=rp.uri("oa"))
        services.saml_sps.add("erp", metadata_xml=sp.metadata(), domain="erp", first_party=True)
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
                page.goto(sp.url + "/login")
                assert page.url.startswith(f"{issuer}/login?")
                page.fill("input[name=username]", "carol")
                page.fill("input[name=password]", "carol-demo-1")
                page.click("button[type=submit]")
                page.wait_for_url(sp.url + "/acs")
                verdict = json.loads(page.locator("body").inner_text())
                assert verdict["ok"], verdict
                assert verdict["friendly"]["uid"] == ["carol"]
                # The OIDC client: no password prompt this time.
                page.goto(oidc_url)
                page.wait_for_url(f"http://127.0.0.1:{port}/callback?*")
                assert "code=" in page.url
                page.goto(f"{issuer}/logout")
                page.click("button[type=submit]")
                page.wait_for_load_state()
                assert "signed out" in page.locator("p[role=status]").inner_text()
            finally:
                browser.close()
        received = rp.wait_for(1)
        wait_for(lambda: sp.logout_requests)
    assert [r["_client"] for r in received] == ["oa"]
    notice = sp.logout_requests[0]
    assert notice["signed"] and notice["valid"], notice
    assert notice["name_id"] == verdict["name_id"]
    assert services.sessions.active_for_user(carol.id) == []
