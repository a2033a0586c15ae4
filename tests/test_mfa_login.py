"""Second factors through the real login and account pages over HTTP (httpx as the browser,
pyotp as the authenticator app), ending in OIDC ID tokens whose `acr` / `amr` say what was
presented; plus the admin commands."""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from authlib.common.security import generate_token

from idhub.core.assurance import ACR_MFA, ACR_REMEMBERED
from idhub.core.audit import Actor
from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer
from tests.sso_support import (
    cli_config_for,
    csrf_token,
    events,
    follow,
    hidden_fields,
    make_user,
    oauth_client,
    post_login,
    register_client,
    validate_id_token,
)

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")

_SECRET = re.compile(r'id="totp-secret">([A-Z2-7 ]+)<')
_CODES = re.compile(r"<li><code>([0-9a-f]{5}-[0-9a-f]{5})</code></li>")
_CONTINUE = re.compile(r'<a href="([^"]+)" id="continue">')


def _authorization_url(client: Any, issuer: str, **extra: str) -> tuple[str, str, str]:
    verifier = generate_token(48)
    nonce = secrets.token_urlsafe(16)
    url, _ = client.create_authorization_url(
        f"{issuer}/authorize", code_verifier=verifier, nonce=nonce, **extra
    )
    return url, verifier, nonce


def _form_of(page: str, form_id: str) -> dict[str, str]:
    """The hidden fields of one form of the page."""
    start = page.index(f'id="{form_id}"')
    return hidden_fields(page[start : page.index("</form>", start)])


def _account_action(browser: httpx.Client, page: httpx.Response, action: str, **fields: str) -> Any:
    data = {"csrf_token": csrf_token(page.text), "action": action, **fields}
    target = re.search(r'<form method="post" action="(/account/security[^"]*)"', page.text)
    assert target, page.text[:500]
    return browser.post(html.unescape(target.group(1)), data=data)


def _code_flow_token(oa: Any, issuer: str, callback: httpx.Response, verifier: str) -> Any:
    assert callback.status_code == 302, callback.text[:500]
    location = callback.headers["location"]
    assert location.startswith("http://127.0.0.1:8001/callback?") and "code=" in location
    return oa.fetch_token(
        f"{issuer}/token", authorization_response=location, code_verifier=verifier
    )


def _enrol_through_the_account_page(
    browser: httpx.Client, page: httpx.Response, known: KnownSecrets
) -> tuple[pyotp.TOTP, list[str], httpx.Response]:
    begun = _account_action(browser, page, "totp_begin")
    assert begun.status_code == 200 and "<svg" in begun.text and "https://" not in begun.text
    found = _SECRET.search(begun.text)
    assert found, begun.text[:800]
    totp = pyotp.TOTP(found.group(1).replace(" ", ""))
    known.add(totp.secret)
    code = totp.now()
    known.add(code)
    confirmed = _account_action(browser, begun, "totp_confirm", code=code)
    assert confirmed.status_code == 200, confirmed.text[:500]
    codes = _CODES.findall(confirmed.text)
    assert len(codes) == 10
    known.add(*codes)
    return totp, codes, confirmed


def test_required_person_enrols_then_signs_in_with_totp_and_acr_values(
    live_server: LiveServer, known_secrets: KnownSecrets
) -> None:
    services, issuer = live_server.services, live_server.url
    alice = make_user(services, "alice", "alice-password-1")
    services.mfa.apply_required(alice, True, actor=Actor("admin", "test"))
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret)
    url, verifier, nonce = _authorization_url(oa, issuer, acr_values=ACR_MFA)
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration").json()
    assert ACR_MFA in discovery["acr_values_supported"]
    with httpx.Client(base_url=issuer) as browser:
        login_page = follow(browser, url)
        sent = post_login(browser, login_page, "alice", "alice-password-1")
        # Not enrolled but required: sent to enrol first.
        assert sent.status_code == 303
        assert sent.headers["location"].startswith("/account/security?required=1&return_to=")
        account = browser.get(sent.headers["location"])
        assert account.status_code == 200 and "两步验证" in account.text
        totp, _codes, enrolled = _enrol_through_the_account_page(browser, account, known_secrets)
        onward = _CONTINUE.search(enrolled.text)
        assert onward, enrolled.text[:800]
        # Enrolling proved the new factor: the session is at the MFA level.
        callback = follow(browser, html.unescape(onward.group(1)))
        first = _code_flow_token(oa, issuer, callback, verifier)
    claims = validate_id_token(issuer, first["id_token"], client_id="oa", nonce=nonce)
    assert claims["acr"] == ACR_MFA and claims["amr"] == ["pwd", "otp"]
    # A new browser: password, then the second-factor step, then the ID token says MFA.
    url, verifier, nonce = _authorization_url(oa, issuer, acr_values=ACR_MFA)
    with httpx.Client(base_url=issuer) as browser:
        step = post_login(browser, follow(browser, url), "alice", "alice-password-1")
        assert step.status_code == 200 and 'name="pending"' in step.text
        assert 'name="password"' not in step.text
        fields = _form_of(step.text, "totp-form")
        wrong = browser.post("/login/second-factor", data={**fields, "answer": "000000"})
        assert wrong.status_code == 401 and "验证未通过" in wrong.text
        code = totp.at(services.clock.now() + 30)  # the enrolment used the current step
        known_secrets.add(code)
        done = browser.post("/login/second-factor", data={**fields, "answer": code})
        assert done.status_code == 303 and done.headers["location"].startswith("/authorize?")
        second = _code_flow_token(oa, issuer, follow(browser, done.headers["location"]), verifier)
        replay = browser.post("/login/second-factor", data={**fields, "answer": code})
        assert replay.status_code == 401
    claims = validate_id_token(issuer, second["id_token"], client_id="oa", nonce=nonce)
    assert claims["acr"] == ACR_MFA and claims["amr"] == ["pwd", "otp"]
    kinds = [e["details"].get("method") for e in events(services, "mfa.enrolled")]
    assert kinds == ["totp"] and events(services, "mfa.succeeded")
    failed = [e["details"]["reason"] for e in events(services, "mfa.failed")]
    assert failed == ["bad_code", "code_reused"]


def test_remembered_browser_skips_the_factor_until_a_system_steps_up(
    live_server: LiveServer, known_secrets: KnownSecrets
) -> None:
    services, issuer = live_server.services, live_server.url
    bob = make_user(services, "bob", "bob-password-1")
    enrolment = services.mfa.begin_totp(bob)
    known_secrets.add(enrolment.secret)
    totp = pyotp.TOTP(enrolment.secret)
    assert services.mfa.confirm_totp(bob, totp.at(services.clock.now() - 30), ctx=None)
    codes = services.mfa.new_recovery_codes(bob, ctx=None)
    known_secrets.add(*codes)
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret)
    with httpx.Client(base_url=issuer) as browser:
        url, verifier, _ = _authorization_url(oa, issuer)
        step = post_login(browser, follow(browser, url), "bob", "bob-password-1")
        assert step.status_code == 200 and "recovery-form" in step.text
        code = totp.now()
        known_secrets.add(code)
        fields = {**_form_of(step.text, "totp-form"), "answer": code, "remember": "1"}
        done = browser.post("/login/second-factor", data=fields)
        assert done.status_code == 303
        device = done.cookies.get("idhub_device")
        assert device and "HttpOnly" in done.headers["set-cookie"]
        known_secrets.add(device)
        _code_flow_token(oa, issuer, follow(browser, done.headers["location"]), verifier)
        # Signed out of the session but the browser is remembered: password only.
        browser.cookies.delete("idhub_session")
        url, verifier, nonce = _authorization_url(oa, issuer)
        quick = post_login(browser, follow(browser, url), "bob", "bob-password-1")
        assert quick.status_code == 303, quick.text[:400]
        token = _code_flow_token(oa, issuer, follow(browser, quick.headers["location"]), verifier)
        claims = validate_id_token(issuer, token["id_token"], client_id="oa", nonce=nonce)
        assert claims["acr"] == ACR_REMEMBERED and claims["amr"] == ["pwd"]
        # The account page wants the factor itself before anything changes.
        account = browser.get("/account/security")
        assert account.status_code == 303 and "acr_values" in account.headers["location"]
        # A system asking for MFA: the second factor again, without the password.
        url, verifier, nonce = _authorization_url(oa, issuer, acr_values=ACR_MFA)
        step_up = follow(browser, url)
        assert step_up.status_code == 200 and 'name="pending"' in step_up.text
        assert 'name="password"' not in step_up.text
        fields = {**_form_of(step_up.text, "recovery-form"), "answer": codes[0]}
        done = browser.post("/login/second-factor", data=fields)
        assert done.status_code == 303
        token = _code_flow_token(oa, issuer, follow(browser, done.headers["location"]), verifier)
        claims = validate_id_token(issuer, token["id_token"], client_id="oa", nonce=nonce)
        assert claims["acr"] == ACR_MFA and claims["amr"] == ["pwd", "otp"]
        # Forgetting the browser on the account page: asked again next time.
        account = browser.get("/account/security")
        assert account.status_code == 200
        device_id = device.split(".")[0]
        assert device_id in account.text
        forgot = _account_action(browser, account, "device_revoke", device=device_id)
        assert forgot.status_code == 200 and device_id not in forgot.text
        browser.cookies.delete("idhub_session")
        url, _, _ = _authorization_url(oa, issuer)
        asked = post_login(browser, follow(browser, url), "bob", "bob-password-1")
        assert asked.status_code == 200 and 'name="pending"' in asked.text
    assert [e["details"]["left"] for e in events(services, "mfa.recovery_code_used")] == [9]
    assert len(events(services, "mfa.device_remembered")) == 1
    assert len(events(services, "mfa.device_revoked")) == 1


def test_second_factor_form_needs_its_csrf_token(
    live_server: LiveServer, known_secrets: KnownSecrets
) -> None:
    services, issuer = live_server.services, live_server.url
    carol = make_user(services, "carol", "carol-password-1")
    enrolment = services.mfa.begin_totp(carol)
    known_secrets.add(enrolment.secret)
    totp = pyotp.TOTP(enrolment.secret)
    assert services.mfa.confirm_totp(carol, totp.at(services.clock.now() - 30), ctx=None)
    with httpx.Client(base_url=issuer) as browser:
        step = post_login(browser, browser.get("/login"), "carol", "carol-password-1")
        fields = _form_of(step.text, "totp-form")
        code = totp.now()
        known_secrets.add(code)
        forged = browser.post(
            "/login/second-factor", data={**fields, "csrf_token": "x" * 64, "answer": code}
        )
        assert forged.status_code == 400 and "idhub_session" not in forged.cookies
        options = browser.post("/login/passkey/options", data={"pending": fields["pending"]})
        assert options.status_code == 400
        ok = browser.post("/login/second-factor", data={**fields, "answer": code})
        assert ok.status_code == 303 and ok.cookies.get("idhub_session")


def test_admin_shows_and_resets_second_factors(
    live_server: LiveServer,
    known_secrets: KnownSecrets,
    run_cli: Callable[..., Any],
    tmp_path: Path,
    db_url: str,
) -> None:
    services = live_server.services
    dora = make_user(services, "dora", "dora-password-1")
    enrolment = services.mfa.begin_totp(dora)
    known_secrets.add(enrolment.secret)
    assert services.mfa.confirm_totp(dora, pyotp.TOTP(enrolment.secret).now(), ctx=None)
    known_secrets.add(*services.mfa.new_recovery_codes(dora, ctx=None))
    config = cli_config_for(tmp_path, db_url)
    shown = run_cli("user", "mfa", "show", "dora", "--json", config=config)
    assert shown.code == 0, shown.err
    info = json.loads(shown.out)
    assert info["totp"] is True and info["recovery_codes_left"] == 10
    assert enrolment.secret not in shown.out
    assert run_cli("user", "mfa", "reset", "dora", config=config).code == 0
    assert run_cli("user", "mfa", "require", "dora", config=config).code == 0
    info = json.loads(run_cli("user", "mfa", "show", "dora", "--json", config=config).out)
    assert info["totp"] is False and info["recovery_codes_left"] == 0
    assert info["required_by_admin"] is True
    with httpx.Client(base_url=live_server.url) as browser:
        sent = post_login(browser, browser.get("/login"), "dora", "dora-password-1")
    assert sent.status_code == 303 and sent.headers["location"].startswith("/account/security")
    reset = events(services, "mfa.reset")
    assert len(reset) == 1 and reset[0]["actor_type"] == "admin"
