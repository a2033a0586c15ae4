"""The login page in a real browser: Debian chromium driven by Playwright signs in through the
form and lands on the relying party's callback. Never downloads a browser."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from authlib.common.security import generate_token

from tests.conftest import LiveServer, free_port
from tests.rp_app import running_rp
from tests.sso_support import make_user, oauth_client, register_client, validate_id_token

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:The httpx module is deprecated"),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Where a screenshot of the login page is kept for people to look at (ignored by git).
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "var" / "screenshots"


def test_sign_in_through_the_form_in_chromium(live_server: LiveServer) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    services, issuer = live_server.services, live_server.url
    alice = make_user(services, "alice", "alice-demo-1", display_name="王小丽")
    port = free_port()
    with running_rp(issuer, port) as rp:
        _, secret = register_client(services, "oa", port=port)
        oa = oauth_client(issuer, "oa", secret, port=port)
        verifier = generate_token(48)
        nonce = secrets.token_urlsafe(12)
        url, _ = oa.create_authorization_url(
            f"{issuer}/authorize", code_verifier=verifier, nonce=nonce
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_context(locale="zh-CN").new_page()
                page.goto(url)
                assert page.url.startswith(f"{issuer}/login?")
                assert page.locator("h1").inner_text() == "登录"
                SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT_DIR / "login-zh-CN.png"))
                # A wrong password first: the generic message, still on the login page.
                page.fill("input[name=username]", "alice")
                page.fill("input[name=password]", "wrong-password")
                page.click("button[type=submit]")
                assert page.locator("p.error").inner_text() == "用户名或密码错误。"
                page.fill("input[name=password]", "alice-demo-1")
                page.click("button[type=submit]")
                page.wait_for_url(f"http://127.0.0.1:{port}/callback?*")
                assert page.locator("#result").inner_text() == "RP callback: signed in"
                landed = page.url
                cookies = {c["name"]: c for c in page.context.cookies(issuer)}
            finally:
                browser.close()
    session_cookie = cookies["idhub_session"]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"
    token = oa.fetch_token(f"{issuer}/token", authorization_response=landed, code_verifier=verifier)
    claims = validate_id_token(issuer, token["id_token"], client_id="oa", nonce=nonce)
    assert claims["sub"] == alice.sub
    assert rp.callbacks == [landed]


def test_single_sign_on_and_logout_in_chromium(live_server: LiveServer) -> None:
    """One sign-in serves two systems; logging out of one tells both over the back channel."""
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    services, issuer = live_server.services, live_server.url
    bob = make_user(services, "bob", "bob-demo-1", display_name="李强")
    port = free_port()
    with running_rp(issuer, port) as rp:
        _, oa_secret = register_client(
            services, "oa", port=port, backchannel_logout_uri=rp.uri("oa")
        )
        services.clients.register(
            "reimburse",
            redirect_uris=[f"http://127.0.0.1:{port}/callback?system=reimburse"],
            post_logout_redirect_uris=[f"http://127.0.0.1:{port}/callback?logged_out=1"],
            backchannel_logout_uri=rp.uri("reimburse"),
            first_party=True,
            scope="openid profile",
        )
        oa = oauth_client(issuer, "oa", oa_secret, port=port)
        url, _ = oa.create_authorization_url(
            f"{issuer}/authorize", code_verifier=generate_token(48)
        )
        reimburse_url = (
            f"{issuer}/authorize?client_id=reimburse&response_type=code&scope=openid"
            f"&redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback%3Fsystem%3Dreimburse"
            "&code_challenge=E9Melhoe2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
            "&code_challenge_method=S256&state=r1"
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_context(locale="en-US").new_page()
                page.goto(url)
                assert page.locator("h1").inner_text() == "Sign in"
                page.fill("input[name=username]", "bob")
                page.fill("input[name=password]", "bob-demo-1")
                page.click("button[type=submit]")
                page.wait_for_url(f"http://127.0.0.1:{port}/callback?*")
                # The second system: no login page, straight to its callback with a code.
                page.goto(reimburse_url)
                page.wait_for_url(f"http://127.0.0.1:{port}/callback?system=reimburse*")
                assert "code=" in page.url
                # Sign out at idhub (no id_token_hint): a confirmation page, then done.
                page.goto(f"{issuer}/logout")
                assert "李强" in page.content()
                page.click("button[type=submit]")
                page.wait_for_load_state()
                assert "signed out" in page.locator("p[role=status]").inner_text()
            finally:
                browser.close()
        received = rp.wait_for(2)
    assert sorted(r["_client"] for r in received) == ["oa", "reimburse"]
    assert {r["sub"] for r in received} == {bob.sub}
    assert services.sessions.active_for_user(bob.id) == []
