"""Sign in with DingTalk and WeCom (web/upstream.py, core/upstream_flow.py) against the local
fakes of both platforms (tests/dingtalk_fake.py, tests/wecom_fake.py), a real idhub over HTTP
on SQLite and PostgreSQL, and authlib's client as the relying party: from `/authorize`
through the provider and back to a code and tokens whose `amr` names the upstream method,
and every way it can go wrong (state replayed, foreign or missing, a code the platform
refuses, a person idhub does not know or has disabled, a WeCom visitor who is not a member,
the platform down), each a clear page and an audited `login.failed`, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from idhub.adapters.db import users
from idhub.config import Settings
from idhub.core.assurance import ACR_UPSTREAM
from idhub.errors import ConfigError
from tests.conftest import LiveServer
from tests.dingtalk_fake import APP_KEY, DingTalkFake, union_id
from tests.sso_support import events, validate_id_token
from tests.upstream_support import (
    DINGTALK,
    ENV,
    WECOM,
    Corp,
    browse,
    button,
    make_corp,
    no_codes_logged,
    redeem,
    sign_in_via,
    synced,
)
from tests.wecom_fake import AGENT_ID, CORP_ID, WeComFake

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")


@pytest.fixture
def corp_db(
    make_live_server: Callable[..., LiveServer],
    db_url: str,
    dingtalk: DingTalkFake,
    wecom: WeComFake,
    known_secrets: Any,
) -> Corp:
    """On SQLite and PostgreSQL: where the state store and the user lookup decide."""
    return make_corp(make_live_server, db_url, dingtalk, wecom, known_secrets)


@pytest.fixture
def corp(
    make_live_server: Callable[..., LiveServer],
    sqlite_db_url: str,
    dingtalk: DingTalkFake,
    wecom: WeComFake,
    known_secrets: Any,
) -> Corp:
    return make_corp(make_live_server, sqlite_db_url, dingtalk, wecom, known_secrets)


# ------------------------------------------------------------------ the flows


def test_dingtalk_sign_in_from_authorize_to_tokens(corp_db: Corp, known_secrets: Any) -> None:
    corp = corp_db
    person = synced(corp, "dingtalk:corp", "dt000005")
    # The contacts sync keeps the unionid sign-in matches on (and the title).
    assert person.attributes == {"unionid": union_id("dt000005"), "title": "财务经理"}
    with httpx.Client(timeout=10) as browser:
        landed, verifier, nonce = sign_in_via(corp, browser, DINGTALK, as_user="dt000005")
        assert landed.status_code == 302, landed.text[:400]
        token = redeem(corp, landed, verifier, known_secrets)
    claims = validate_id_token(corp.url, token["id_token"], client_id="oa", nonce=nonce)
    assert claims["sub"] == person.sub
    assert claims["amr"] == ["dingtalk"] and claims["acr"] == ACR_UPSTREAM
    # The platform saw what its login page expects.
    visit = corp.dingtalk.logins[-1]
    assert visit["client_id"] == APP_KEY and visit["prompt"] == "consent"
    assert visit["redirect_uri"] == f"{corp.url}/login/upstream/{DINGTALK}/callback"
    started = events(corp.server.services, "login.upstream_started")
    assert [e["details"]["provider"] for e in started] == [DINGTALK]
    succeeded = events(corp.server.services, "login.succeeded")[-1]
    assert succeeded["details"]["method"] == "upstream"
    assert succeeded["details"]["provider"] == DINGTALK
    assert succeeded["details"]["amr"] == ["dingtalk"]
    assert succeeded["target"] == "dt000005"
    no_codes_logged(corp, known_secrets)


def test_wecom_sign_in_from_authorize_to_tokens(corp_db: Corp, known_secrets: Any) -> None:
    corp = corp_db
    person = synced(corp, "wecom:corp", "wc000003")
    with httpx.Client(timeout=10) as browser:
        landed, verifier, nonce = sign_in_via(corp, browser, WECOM, as_user="wc000003")
        token = redeem(corp, landed, verifier, known_secrets)
    claims = validate_id_token(corp.url, token["id_token"], client_id="oa", nonce=nonce)
    assert claims["sub"] == person.sub and claims["amr"] == ["wecom"]
    assert corp.wecom.calls["wwlogin/sso/login"] == 1
    assert corp.wecom.logins[-1]["login_type"] == "CorpApp"
    no_codes_logged(corp, known_secrets)


def test_wecom_in_app_browser_goes_to_the_oauth_page(corp: Corp, known_secrets: Any) -> None:
    agent = "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 wxwork/4.1.0 MicroMessenger/7.0.1"
    with httpx.Client(timeout=10, headers={"User-Agent": agent}) as browser:
        landed, verifier, _ = sign_in_via(corp, browser, WECOM, as_user="wc000002")
        redeem(corp, landed, verifier, known_secrets)
    assert corp.wecom.calls["connect/oauth2/authorize"] == 1
    assert corp.wecom.calls["wwlogin/sso/login"] == 0
    assert corp.wecom.logins[-1]["scope"] == "snsapi_base"
    no_codes_logged(corp, known_secrets)


def test_no_buttons_without_sign_in(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str, dingtalk: DingTalkFake
) -> None:
    toml = (
        f'[directory.dingtalk.corp]\nbase_url = "{dingtalk.url}"\napp_key = "{APP_KEY}"\n'
        'app_secret_env = "DINGTALK_APP_SECRET"\n'
    )
    server = make_live_server(sqlite_db_url, toml=toml, env=ENV)
    page = httpx.get(f"{server.url}/login", timeout=10)
    assert page.status_code == 200 and "/login/upstream/" not in page.text
    assert httpx.get(f"{server.url}/login/upstream/{DINGTALK}", timeout=10).status_code == 404


def test_buttons_are_translated(corp: Corp) -> None:
    zh = httpx.get(f"{corp.url}/login", headers={"Accept-Language": "zh-CN"}, timeout=10)
    assert "钉钉扫码登录" in zh.text and "企业微信登录" in zh.text
    en = httpx.get(f"{corp.url}/login", headers={"Accept-Language": "en"}, timeout=10)
    assert "Sign in with DingTalk" in en.text and "Sign in with WeCom" in en.text


# ------------------------------------------------------------------ the state


def _to_callback(corp: Corp, browser: httpx.Client, provider: str, user: str | None) -> str:
    """Starts a sign-in and lets the platform answer; returns the callback URL the platform
    sent the browser to, not yet visited."""
    corp.dingtalk.scan_as = corp.wecom.scan_as = user
    started = browser.get(f"{corp.url}/login/upstream/{provider}")
    assert started.status_code == 303
    platform = browser.get(started.headers["location"])
    assert platform.status_code == 302
    return platform.headers["location"]


def _failure_reasons(corp: Corp) -> list[str]:
    return [
        e["details"]["reason"]
        for e in events(corp.server.services, "login.failed")
        if e["details"].get("method") == "upstream"
    ]


def test_a_replayed_callback_is_refused(corp_db: Corp, known_secrets: Any) -> None:
    corp = corp_db
    with httpx.Client(timeout=10) as browser:
        callback = _to_callback(corp, browser, DINGTALK, "dt000001")
        cookie = browser.cookies.get("idhub_upstream")
        first = browser.get(callback)
        assert first.status_code == 303 and first.headers["location"] == "/login"
    # The same callback again, with the state cookie put back: the state is spent.
    again = httpx.get(callback, headers={"Cookie": f"idhub_upstream={cookie}"}, timeout=10)
    assert again.status_code == 400
    assert "state_unknown" in again.text and "已失效" in again.text
    assert _failure_reasons(corp) == ["state_unknown"]
    no_codes_logged(corp, known_secrets)


def test_a_state_from_another_browser_is_refused_and_not_spent(
    corp_db: Corp, known_secrets: Any
) -> None:
    corp = corp_db
    with httpx.Client(timeout=10) as victim, httpx.Client(timeout=10) as attacker:
        # The attacker's own sign-in, its callback sent to someone else's browser (login CSRF).
        callback = _to_callback(corp, attacker, DINGTALK, "dt000001")
        refused = victim.get(callback)
        assert refused.status_code == 400 and "state_foreign" in refused.text
        assert "idhub_session" not in victim.cookies
        # The browser that started it can still finish: a foreign try does not spend a state.
        done = attacker.get(callback)
        assert done.status_code == 303 and "idhub_session" in attacker.cookies
    assert _failure_reasons(corp) == ["state_foreign"]
    no_codes_logged(corp, known_secrets)


def test_sign_ins_started_in_several_tabs_each_finish(corp_db: Corp, known_secrets: Any) -> None:
    corp = corp_db
    with httpx.Client(timeout=10) as browser:
        first = _to_callback(corp, browser, DINGTALK, "dt000001")
        second = _to_callback(corp, browser, DINGTALK, "dt000002")
        # The first tab comes back after the second one started: both are this browser's.
        done = browser.get(first)
        assert done.status_code == 303 and "idhub_session" in browser.cookies
        # Its binding is gone with it; the second tab's stays and finishes too.
        assert len(browser.cookies.get("idhub_upstream", "").split(".")) == 1
        assert browser.get(second).status_code == 303
        assert "idhub_upstream" not in browser.cookies
        assert browser.get(first).status_code == 400  # its binding went with it
    with httpx.Client(timeout=10) as browser:
        # At most four under way: a fifth start pushes the oldest out.
        started = [_to_callback(corp, browser, DINGTALK, "dt000001") for _ in range(5)]
        assert len(browser.cookies.get("idhub_upstream", "").split(".")) == 4
        oldest = browser.get(started[0])
        assert oldest.status_code == 400 and "state_foreign" in oldest.text
        assert browser.get(started[4]).status_code == 303
    assert _failure_reasons(corp) == ["state_foreign", "state_foreign"]
    no_codes_logged(corp, known_secrets)


def test_a_callback_without_state_or_for_another_provider(corp: Corp, known_secrets: Any) -> None:
    with httpx.Client(timeout=10) as browser:
        callback = _to_callback(corp, browser, DINGTALK, "dt000001")
        query = urlsplit(callback).query
        # The state came from DingTalk's flow; WeCom's callback must not take it. The cookie
        # (path /login/upstream) matches, the state names DingTalk: refused, and spent.
        elsewhere = browser.get(f"{corp.url}/login/upstream/{WECOM}/callback?{query}")
        assert elsewhere.status_code == 400 and "state_provider" in elsewhere.text
        no_state = browser.get(f"{corp.url}/login/upstream/{DINGTALK}/callback?authCode=x")
    assert no_state.status_code == 400 and "state_missing" in no_state.text
    unknown = httpx.get(f"{corp.url}/login/upstream/nosuch/callback?state=x", timeout=10)
    assert unknown.status_code == 404 and "unknown_provider" in unknown.text
    no_codes_logged(corp, known_secrets)


def test_an_expired_state_is_refused(corp: Corp, known_secrets: Any) -> None:
    from idhub.adapters.db import upstream_states

    with httpx.Client(timeout=10) as browser:
        callback = _to_callback(corp, browser, DINGTALK, "dt000001")
        with corp.server.services.engine.begin() as conn:  # the browser took too long
            conn.execute(upstream_states.update().values(expires_at=0.0))
        refused = browser.get(callback)
    assert refused.status_code == 400 and "state_unknown" in refused.text
    no_codes_logged(corp, known_secrets)


# ------------------------------------------------------------------ the platform says no


def test_a_code_the_platform_refuses(corp: Corp, known_secrets: Any) -> None:
    with httpx.Client(timeout=10) as browser:
        callback = _to_callback(corp, browser, DINGTALK, "dt000001")
        forged = callback.replace("authCode=", "authCode=0")
        refused = browser.get(forged)
    assert refused.status_code == 400 and "code_refused" in refused.text
    with httpx.Client(timeout=10) as browser:
        corp.dingtalk.code_ttl = -1  # DingTalk's code lived too long before it was used
        refused = browser.get(_to_callback(corp, browser, DINGTALK, "dt000001"))
    assert refused.status_code == 400 and "code_refused" in refused.text
    with httpx.Client(timeout=10) as browser:
        corp.wecom.code_ttl = -1
        refused = browser.get(_to_callback(corp, browser, WECOM, "wc000001"))
    assert refused.status_code == 400 and "code_refused" in refused.text
    assert _failure_reasons(corp) == ["code_refused"] * 3
    no_codes_logged(corp, known_secrets)


def test_the_person_cancelled(corp: Corp) -> None:
    with httpx.Client(timeout=10) as browser:
        refused = browser.get(_to_callback(corp, browser, DINGTALK, None))
    assert refused.status_code == 400 and "code_missing" in refused.text


def test_unknown_and_disabled_people_are_refused(corp_db: Corp, known_secrets: Any) -> None:
    corp = corp_db
    services = corp.server.services
    with httpx.Client(timeout=10) as browser:
        # Someone DingTalk knows and the sync never brought in: no account is made up.
        stranger = browser.get(_to_callback(corp, browser, DINGTALK, "stranger01"))
    assert stranger.status_code == 400 and "unknown_user" in stranger.text
    assert "尚未开通" in stranger.text
    before = len(list(services.identity.list_users()))
    person = synced(corp, "dingtalk:corp", "dt000004")
    services.identity.set_disabled(person.id, True, reason="admin")
    with httpx.Client(timeout=10) as browser:
        disabled = browser.get(_to_callback(corp, browser, DINGTALK, "dt000004"))
        assert disabled.status_code == 400 and "user_disabled" in disabled.text
        assert "idhub_session" not in browser.cookies
    wecom_person = synced(corp, "wecom:corp", "wc000006")
    services.identity.set_disabled(wecom_person.id, True, reason="admin")
    with httpx.Client(timeout=10) as browser:
        disabled = browser.get(_to_callback(corp, browser, WECOM, "wc000006"))
    assert disabled.status_code == 400 and "user_disabled" in disabled.text
    assert len(list(services.identity.list_users())) == before
    assert _failure_reasons(corp) == ["unknown_user", "user_disabled", "user_disabled"]
    failed = [
        e for e in events(services, "login.failed") if e["details"].get("method") == "upstream"
    ]
    assert failed[0]["details"]["subject"] == union_id("stranger01")
    assert failed[1]["target"] == "dt000004"
    no_codes_logged(corp, known_secrets)


def test_a_wecom_visitor_who_is_not_a_member(corp: Corp, known_secrets: Any) -> None:
    corp.wecom.outsiders.add("visitor9")
    with httpx.Client(timeout=10) as browser:
        refused = browser.get(_to_callback(corp, browser, WECOM, "visitor9"))
    assert refused.status_code == 400 and "not_member" in refused.text
    assert "不是本企业的成员" in refused.text
    no_codes_logged(corp, known_secrets)


def test_the_platform_is_down(corp: Corp, known_secrets: Any) -> None:
    corp.dingtalk.script("v1.0/oauth2/userAccessToken", [("http", 503)])
    with httpx.Client(timeout=10) as browser:
        down = browser.get(_to_callback(corp, browser, DINGTALK, "dt000001"))
    assert down.status_code == 502 and "upstream_unavailable" in down.text
    assert "暂时无法连接" in down.text
    # WeCom: "system busy" on every try, then given up within the bound (a person waits).
    corp.wecom.fail_always["cgi-bin/auth/getuserinfo"] = {"errcode": -1, "errmsg": "busy"}
    with httpx.Client(timeout=20) as browser:
        down = browser.get(_to_callback(corp, browser, WECOM, "wc000001"))
    assert down.status_code == 502 and "upstream_unavailable" in down.text
    assert corp.wecom.calls["cgi-bin/auth/getuserinfo"] == 3  # one try and two retries
    # The platform's API host not answering at all.
    corp.dingtalk.script("v1.0/contact/users/me", [("raw", b"<html>proxy</html>")])
    with httpx.Client(timeout=10) as browser:
        broken = browser.get(_to_callback(corp, browser, DINGTALK, "dt000001"))
    assert broken.status_code == 400 and "upstream_error" in broken.text
    no_codes_logged(corp, known_secrets)


def test_an_expired_wecom_token_is_refreshed_once(corp: Corp, known_secrets: Any) -> None:
    with httpx.Client(timeout=10) as browser:
        assert browser.get(_to_callback(corp, browser, WECOM, "wc000001")).status_code == 303
    corp.wecom.expire()
    with httpx.Client(timeout=10) as browser:
        done = browser.get(_to_callback(corp, browser, WECOM, "wc000002"))
    assert done.status_code == 303
    assert corp.wecom.calls["cgi-bin/gettoken"] >= 2
    no_codes_logged(corp, known_secrets)


# ------------------------------------------------------------------ the store


def test_a_state_is_taken_once(corp_db: Corp) -> None:
    from idhub.adapters.upstream_states import SqlUpstreamStates
    from idhub.core.upstream_flow import PendingUpstream

    states = SqlUpstreamStates(corp_db.server.services.engine)
    states.put("k" * 64, PendingUpstream("p", "/authorize?x=1", 100.0), expires_at=200.0)
    assert states.take("k" * 64, now=150.0) == PendingUpstream("p", "/authorize?x=1", 100.0)
    assert states.take("k" * 64, now=150.0) is None
    states.put("e" * 64, PendingUpstream("p", None, 100.0), expires_at=120.0)
    assert states.take("e" * 64, now=150.0) is None  # expired
    # An expired row is swept when the next one comes.
    states.put("f" * 64, PendingUpstream("p", None, 300.0), expires_at=400.0)
    states.put("g" * 64, PendingUpstream("p", None, 500.0), expires_at=600.0)
    assert states.take("f" * 64, now=450.0) is None
    # Callbacks racing for one state (a double click, two replicas): one of them gets it.
    from concurrent.futures import ThreadPoolExecutor

    states.put("r" * 64, PendingUpstream("p", None, 500.0), expires_at=900.0)
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda _: states.take("r" * 64, now=550.0), range(6)))
    assert sum(1 for g in got if g is not None) == 1


# ------------------------------------------------------------------ configuration


WECOM_HEAD = (
    f'[directory.wecom.corp]\ncorp_id = "{CORP_ID}"\ncorp_secret_env = "WECOM_CORP_SECRET"\n'
)
DINGTALK_HEAD = (
    f'[directory.dingtalk.corp]\napp_key = "{APP_KEY}"\napp_secret_env = "DINGTALK_APP_SECRET"\n'
)


def _load(make_settings: Callable[..., Settings], url: str, toml: str) -> Settings:
    return make_settings(url, toml=toml, env=ENV)


@pytest.mark.parametrize(
    ("extra", "kind", "message"),
    [
        ("sign_in = true\n", "wecom", "needs agent_id"),
        ('sign_in = true\nagent_id = "abc"\n', "wecom", "agent_id must be"),
        ('api_url = "https://api.example.com"\n', "wecom", "unknown setting"),
        ('agent_id = "1"\n', "dingtalk", "unknown setting"),
        ('login_url = "login.example.com"\n', "dingtalk", "login_url must look like"),
        ("sign_in = 3\n", "dingtalk", "must be true or false"),
    ],
)
def test_config_errors_name_the_file_and_line(
    make_settings: Callable[..., Settings],
    sqlite_db_url: str,
    extra: str,
    kind: str,
    message: str,
) -> None:
    head = WECOM_HEAD if kind == "wecom" else DINGTALK_HEAD
    with pytest.raises(ConfigError) as caught:
        _load(make_settings, sqlite_db_url, head + extra)
    assert message in str(caught.value)
    assert caught.value.line is not None and caught.value.file.endswith("idhub.toml")


def test_config_defaults_and_agent_secret(
    make_settings: Callable[..., Settings], sqlite_db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "agent.secret").write_text("agent-secret-value\n", encoding="utf-8")
    toml = (
        f'{WECOM_HEAD}sign_in = true\nagent_id = "{AGENT_ID}"\n'
        f'agent_secret_file = "agent.secret"\n\n{DINGTALK_HEAD}sign_in = true\n'
    )
    settings = _load(make_settings, sqlite_db_url, toml)
    wecom = settings.oa_sources["wecom:corp"]
    assert wecom.sign_in and wecom.agent_id == AGENT_ID
    assert wecom.agent_secret is not None and wecom.agent_secret.reveal() == "agent-secret-value"
    assert wecom.login_url == "https://login.work.weixin.qq.com"
    assert wecom.app_login_url == "https://open.weixin.qq.com"
    dingtalk = settings.oa_sources["dingtalk:corp"]
    assert dingtalk.login_url == "https://login.dingtalk.com"
    assert dingtalk.api_url == "https://api.dingtalk.com"


# ------------------------------------------------------------------ a second factor


def test_a_person_with_a_second_factor_is_asked_for_it(corp: Corp, known_secrets: Any) -> None:
    """DingTalk counts as one factor: someone who enrolled an authenticator app presents it
    after the scan, and the session then carries both methods at the MFA level."""
    import pyotp

    from idhub.core.assurance import ACR_MFA
    from tests.sso_support import hidden_fields

    services = corp.server.services
    person = services.identity.get_user_by_username("dt000003")
    assert person is not None
    enrolment = services.mfa.begin_totp(person)
    known_secrets.add(enrolment.secret)
    totp = pyotp.TOTP(enrolment.secret)
    assert services.mfa.confirm_totp(person, totp.at(services.clock.now() - 30), ctx=None)
    with httpx.Client(timeout=10) as browser:
        step, verifier, nonce = sign_in_via(corp, browser, DINGTALK, as_user="dt000003")
        assert step.status_code == 200 and 'name="answer"' in step.text, step.text[:300]
        assert "idhub_session" not in browser.cookies  # no session before the second factor
        start = step.text.index('id="totp-form"')
        fields = hidden_fields(step.text[start : step.text.index("</form>", start)])
        code = totp.now()
        known_secrets.add(code)
        done = browser.post(f"{corp.url}/login/second-factor", data={**fields, "answer": code})
        assert done.status_code == 303
        landed = browse(browser, corp.url + done.headers["location"], stop=corp.at_rp)
        token = redeem(corp, landed, verifier, known_secrets)
    claims = validate_id_token(corp.url, token["id_token"], client_id="oa", nonce=nonce)
    assert claims["acr"] == ACR_MFA and claims["amr"] == ["dingtalk", "otp"]
    no_codes_logged(corp, known_secrets)


def test_a_system_that_needs_mfa_sends_an_unenrolled_person_to_enrol(corp: Corp) -> None:
    services = corp.server.services
    services.clients.update("oa", require_mfa=True)
    with httpx.Client(timeout=10) as browser:
        step, _, _ = sign_in_via(corp, browser, DINGTALK, as_user="dt000001")
        # A session at the upstream level, for the enrolment page only.
        assert "idhub_session" in browser.cookies
    assert step.status_code == 200 and urlsplit(str(step.url)).path == "/account/security"
    assert "required=1" in str(step.url)


# ------------------------------------------------------------------ other front doors


def test_a_cas_login_continues_after_dingtalk(corp: Corp, known_secrets: Any) -> None:
    """The request that sent the browser to the login page continues after the upstream
    sign-in as after a password: here a CAS service gets its ticket."""
    service = "https://cas-app.example.com/oa"
    corp.server.services.cas_services.register("casoa", urls=[service], first_party=True)
    corp.dingtalk.scan_as = "dt000006"
    with httpx.Client(timeout=10) as browser:
        page = browse(browser, f"{corp.url}/cas/login?service={service}", stop=corp.at_rp)
        assert page.status_code == 200 and "/login/upstream/" in page.text, page.text[:300]
        link = button(page.text, DINGTALK)
        left = browse(browser, corp.url + link, stop=lambda url: url.startswith(service))
    location = left.headers["location"]
    assert location.startswith(f"{service}?ticket=ST-"), location
    ticket = location.split("ticket=", 1)[1]
    known_secrets.add(ticket)
    answer = httpx.get(
        f"{corp.url}/cas/p3/serviceValidate",
        params={"service": service, "ticket": ticket},
        timeout=10,
    )
    assert "<cas:user>dt000006</cas:user>" in answer.text, answer.text[:500]
    no_codes_logged(corp, known_secrets)


# ------------------------------------------------------------------ the sync's part


def test_the_sync_fills_in_unionid_and_keeps_other_attributes(corp_db: Corp) -> None:
    """Users synced before the sync kept unionid (or whose unionid changed) get it on the next
    run, as an ordinary update; attribute keys the source does not own are left alone."""
    services = corp_db.server.services
    with services.engine.begin() as conn:
        conn.execute(
            users.update()
            .where(users.c.source == "dingtalk:corp", users.c.external_id == "dt000002")
            .values(attributes={"locker": "B-12"})
        )
    report = services.oa_sync("dingtalk:corp").run()
    assert report.counts["update"] == 1, report.counts
    person = synced(corp_db, "dingtalk:corp", "dt000002")
    assert person.attributes == {"locker": "B-12", "unionid": union_id("dt000002")}
    changes = [
        e["details"] for e in events(services, "sync.change") if e["target"] == "user:dt000002"
    ]
    assert any("attributes.unionid" in (c.get("changes") or {}) for c in changes), changes
    again = services.oa_sync("dingtalk:corp").run()
    assert again.counts["update"] == 0
