"""Passkeys in a real browser: Debian chromium driven by Playwright, with the Chrome DevTools
Protocol's virtual authenticator standing in for a security key or a phone. Registers a passkey
on the account page, then uses it as the second factor after the password and on its own
(passwordless). Never downloads a browser.

The issuer is `http://localhost:PORT` (still served on 127.0.0.1): WebAuthn refuses an IP
address as relying-party id.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idhub.bootstrap import Services
from idhub.core.assurance import ACR_MFA
from idhub.core.audit import Actor
from tests.conftest import free_port, serve
from tests.sso_support import events, make_user

pytestmark = [pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


def _sign_in_with_password(page: Any, issuer: str) -> None:
    page.goto(f"{issuer}/login")
    page.fill("input[name=username]", "erin")
    page.fill("input[name=password]", "erin-password-1")
    page.click("button[type=submit]")


def _session_of(services: Services, user_id: int) -> Any:
    sessions = services.sessions.active_for_user(user_id)
    assert len(sessions) == 1
    return sessions[0]


def test_passkey_registration_second_factor_and_passwordless_in_chromium(
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    port = free_port()
    services = make_services(make_settings(sqlite_db_url, issuer=f"http://localhost:{port}"))
    services.migrate()
    erin = make_user(services, "erin", "erin-password-1", display_name="赵敏")
    with serve(services, port) as served, sync_playwright() as pw:
        issuer = served.replace("127.0.0.1", "localhost")
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(locale="zh-CN")
            page = context.new_page()
            cdp = context.new_cdp_session(page)
            cdp.send("WebAuthn.enable", {"enableUI": False})
            added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
            # 1. Password only (nobody requires more yet), then register a passkey.
            _sign_in_with_password(page, issuer)
            page.wait_for_selector("text=当前登录用户")
            page.goto(f"{issuer}/account/security")
            page.fill("#passkey-name", "工作电脑")
            page.click("#passkey-register")
            page.wait_for_selector("#recovery-codes")
            assert "两步验证已启用" in page.locator("#notice").inner_text()
            assert "工作电脑" in page.locator("#passkeys").inner_text()
            stored = cdp.send(
                "WebAuthn.getCredentials", {"authenticatorId": added["authenticatorId"]}
            )
            assert len(stored["credentials"]) == 1
            assert _session_of(services, erin.id).acr == ACR_MFA

            # 2. A new sign-in: the password, then the passkey as the second factor.
            context.clear_cookies()
            services.logout.logout_user_everywhere(erin.id, reason="test", actor=Actor.system())
            _sign_in_with_password(page, issuer)
            page.wait_for_selector("#passkey-second-factor")
            assert page.locator("input[name=password]").count() == 0
            page.click("#passkey-second-factor")
            page.wait_for_selector("text=当前登录用户")
            session = _session_of(services, erin.id)
            assert session.amr == ("pwd", "hwk") and session.acr == ACR_MFA

            # 3. Passwordless: the passkey alone, with user verification.
            context.clear_cookies()
            services.logout.logout_user_everywhere(erin.id, reason="test", actor=Actor.system())
            page.goto(f"{issuer}/login")
            page.click("#passkey-sign-in")
            page.wait_for_selector("text=当前登录用户")
            session = _session_of(services, erin.id)
            assert session.amr == ("hwk", "user") and session.acr == ACR_MFA
        finally:
            browser.close()
    used = [e["details"] for e in events(services, "mfa.succeeded")]
    assert used == [{"method": "passkey"}, {"method": "passkey", "passwordless": True}]
    assert [e["details"]["method"] for e in events(services, "mfa.enrolled")] == ["passkey"]
