"""What the upstream sign-in tests share (tests/test_upstream_signin.py, .._browser.py): the
DingTalk and WeCom fakes with sign-in configured, a live idhub that synced both, an OIDC
client registered, and a browser-like walk through the redirects."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.common.security import generate_token
from sqlalchemy import select

from idhub.adapters.db import users
from tests.conftest import LiveServer, free_port
from tests.dingtalk_fake import APP_KEY, APP_SECRET, DingTalkFake
from tests.dingtalk_fake import company as dingtalk_company
from tests.sso_support import oauth_client, register_client
from tests.wecom_fake import AGENT_ID, CORP_ID, CORP_SECRET, WeComFake
from tests.wecom_fake import company as wecom_company

ENV = {"DINGTALK_APP_SECRET": APP_SECRET, "WECOM_CORP_SECRET": CORP_SECRET}
DINGTALK = "dingtalk-corp"
WECOM = "wecom-corp"


def sources_toml(dingtalk: DingTalkFake, wecom: WeComFake) -> str:
    return (
        f'[directory.dingtalk.corp]\nbase_url = "{dingtalk.url}"\napp_key = "{APP_KEY}"\n'
        'app_secret_env = "DINGTALK_APP_SECRET"\nretry_base = 0.01\nrate_limit_wait = 1\n'
        f'sign_in = true\nlogin_url = "{dingtalk.url}"\napi_url = "{dingtalk.url}"\n\n'
        f'[directory.wecom.corp]\nbase_url = "{wecom.url}"\ncorp_id = "{CORP_ID}"\n'
        'corp_secret_env = "WECOM_CORP_SECRET"\nretry_base = 0.01\nrate_limit_wait = 1\n'
        f'sign_in = true\nagent_id = "{AGENT_ID}"\nlogin_url = "{wecom.url}"\n'
        f'app_login_url = "{wecom.url}"\n'
    )


def running_dingtalk() -> Iterator[DingTalkFake]:
    org = dingtalk_company(users=8, departments=3)
    org.members["dt000005"].title = "财务经理"
    fake = DingTalkFake(org).start()
    yield fake
    fake.stop()


def wecom_org() -> Any:
    """The same shape as the DingTalk org, with WeCom's own userids (wc...): usernames are
    unique across sources, and these are different people (so their employee numbers and
    mobiles differ too: with the same ones they would be linked as one person)."""
    org = wecom_company(users=8, departments=3)
    org.members = {
        "wc" + k[2:]: replace(
            m,
            userid="wc" + k[2:],
            email=f"wc{k[2:]}@example.com",
            job_number=f"W{k[2:]}",
            mobile=f"13900{k[2:]}",
        )
        for k, m in org.members.items()
    }
    return org


def running_wecom() -> Iterator[WeComFake]:
    fake = WeComFake(wecom_org()).start()
    yield fake
    fake.stop()


@dataclass
class Corp:
    server: LiveServer
    dingtalk: DingTalkFake
    wecom: WeComFake
    rp_port: int
    secret: str

    @property
    def url(self) -> str:
        return self.server.url

    def authorize_url(self, **extra: Any) -> tuple[str, str, str]:
        """An RP's /authorize URL (authlib), with its PKCE verifier and nonce."""
        verifier, nonce = generate_token(48), secrets.token_urlsafe(12)
        url, _ = self.client().create_authorization_url(
            f"{self.url}/authorize", code_verifier=verifier, nonce=nonce, **extra
        )
        return url, verifier, nonce

    def client(self) -> Any:
        return oauth_client(self.url, "oa", self.secret, port=self.rp_port)

    def at_rp(self, url: str) -> bool:
        return url.startswith(f"http://127.0.0.1:{self.rp_port}/")


def make_corp(
    make_live_server: Callable[..., LiveServer],
    db_url: str,
    dingtalk: DingTalkFake,
    wecom: WeComFake,
    known_secrets: Any,
) -> Corp:
    known_secrets.add(APP_SECRET, CORP_SECRET)
    server = make_live_server(db_url, toml=sources_toml(dingtalk, wecom), env=ENV)
    for source in ("dingtalk:corp", "wecom:corp"):
        assert server.services.oa_sync(source).run().status == "succeeded"
    port = free_port()
    _, secret = register_client(server.services, "oa", port=port)
    known_secrets.add(secret)
    return Corp(server, dingtalk, wecom, port, secret)


def browse(
    browser: httpx.Client, url: str, *, stop: Callable[[str], bool], limit: int = 12
) -> httpx.Response:
    """GETs `url` and follows redirects across idhub and the fake platform, as a browser
    would, until one points where `stop` says (the RP's callback); that response is
    returned with the redirect still in its Location header."""
    response = browser.get(url)
    for _ in range(limit):
        location = response.headers.get("location")
        if response.status_code not in (302, 303) or location is None:
            return response
        if location.startswith("/"):
            parts = urlsplit(str(response.url))
            location = f"{parts.scheme}://{parts.netloc}{location}"
        if stop(location):
            return response
        response = browser.get(location)
    raise AssertionError("too many redirects")


def sign_in_via(
    corp: Corp, browser: httpx.Client, provider: str, *, as_user: str | None
) -> tuple[httpx.Response, str, str]:
    """The RP asks /authorize; the login page's button for `provider`; the platform
    "scans" as `as_user`. Returns the last response, the PKCE verifier and the nonce."""
    corp.dingtalk.scan_as = corp.wecom.scan_as = as_user
    url, verifier, nonce = corp.authorize_url()
    page = browse(browser, url, stop=corp.at_rp)
    assert page.status_code == 200 and "/login/upstream/" in page.text, page.text[:400]
    link = button(page.text, provider)
    return browse(browser, corp.url + link, stop=corp.at_rp), verifier, nonce


def button(page: str, provider: str) -> str:
    found = re.search(rf'href="(/login/upstream/{provider}[^"]*)"', page)
    assert found, f"no {provider} button on the login page"
    return html.unescape(found.group(1))


def redeem(corp: Corp, landed: httpx.Response, verifier: str, known_secrets: Any) -> Any:
    location = landed.headers["location"]
    assert corp.at_rp(location), location
    token = corp.client().fetch_token(
        f"{corp.url}/token", authorization_response=location, code_verifier=verifier
    )
    known_secrets.add(token["access_token"], token["id_token"])
    return token


def synced(corp: Corp, source: str, external_id: str) -> Any:
    with corp.server.services.engine.connect() as conn:
        return conn.execute(
            select(users).where(users.c.source == source, users.c.external_id == external_id)
        ).one()


def no_codes_logged(corp: Corp, known_secrets: Any) -> None:
    known_secrets.add(*corp.dingtalk.issued, *corp.wecom.issued)
