"""Sign in with DingTalk and WeCom in a real browser: Debian chromium driven by Playwright goes
from an OIDC client's /authorize to idhub's login page, clicks "钉钉扫码登录" / "企业微信登录",
passes through the platform's (fake) login page and comes back to the client's callback with a
code; the tokens name the upstream method in `amr`. Never downloads a browser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idhub.core.assurance import ACR_UPSTREAM
from tests.conftest import LiveServer
from tests.dingtalk_fake import DingTalkFake
from tests.rp_app import running_rp
from tests.sso_support import validate_id_token
from tests.upstream_support import (
    Corp,
    make_corp,
    no_codes_logged,
    synced,
)
from tests.wecom_fake import WeComFake

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


@pytest.fixture
def corp(
    make_live_server: Callable[..., LiveServer],
    sqlite_db_url: str,
    dingtalk: DingTalkFake,
    wecom: WeComFake,
    known_secrets: Any,
) -> Corp:
    return make_corp(make_live_server, sqlite_db_url, dingtalk, wecom, known_secrets)


def _through_the_button(
    corp: Corp, *, button: str, locale: str, as_user: str, known_secrets: Any
) -> dict[str, Any]:
    """Chromium from /authorize through the button to the RP's callback; the ID token's
    claims."""
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    corp.dingtalk.scan_as = corp.wecom.scan_as = as_user
    url, verifier, nonce = corp.authorize_url()
    with running_rp(corp.url, corp.rp_port) as rp, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_context(locale=locale).new_page()
            page.goto(url)
            assert page.url.startswith(f"{corp.url}/login?")
            page.get_by_text(button, exact=True).click()
            page.wait_for_url(f"http://127.0.0.1:{corp.rp_port}/callback?*")
            assert page.locator("#result").inner_text() == "RP callback: signed in"
            landed = page.url
            cookies = {c["name"]: c for c in page.context.cookies(corp.url)}
        finally:
            browser.close()
    assert rp.callbacks == [landed]
    assert "idhub_session" in cookies and "idhub_upstream" not in cookies
    token = corp.client().fetch_token(
        f"{corp.url}/token", authorization_response=landed, code_verifier=verifier
    )
    known_secrets.add(token["access_token"], token["id_token"])
    no_codes_logged(corp, known_secrets)
    return validate_id_token(corp.url, token["id_token"], client_id="oa", nonce=nonce)


def test_dingtalk_button_in_chromium(corp: Corp, known_secrets: Any) -> None:
    claims = _through_the_button(
        corp, button="钉钉扫码登录", locale="zh-CN", as_user="dt000002", known_secrets=known_secrets
    )
    assert claims["sub"] == synced(corp, "dingtalk:corp", "dt000002").sub
    assert claims["amr"] == ["dingtalk"] and claims["acr"] == ACR_UPSTREAM


def test_wecom_button_in_chromium_in_english(corp: Corp, known_secrets: Any) -> None:
    claims = _through_the_button(
        corp, button="Sign in with WeCom", locale="en-US", as_user="wc000004",
        known_secrets=known_secrets,
    )  # fmt: skip
    assert claims["sub"] == synced(corp, "wecom:corp", "wc000004").sub
    assert claims["amr"] == ["wecom"]
