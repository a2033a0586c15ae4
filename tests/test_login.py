"""The login page over real HTTP (uvicorn) on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import httpx
from sqlalchemy import select

from idhub.adapters.db import sso_sessions
from idhub.core.crypto import sha256_hex
from idhub.core.sessions import COOKIE_NAME
from tests.conftest import LiveServer, free_port, serve
from tests.sso_support import csrf_token, events, hidden_fields, login, make_user, post_login


def _set_cookie_headers(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]


def test_login_page_in_both_languages(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as client:
        zh = client.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"})
        en = client.get("/login", headers={"Accept-Language": "en-GB,en;q=0.9"})
        switched = client.get("/login?lang=en", headers={"Accept-Language": "zh-CN"})
    assert zh.status_code == 200 and '<html lang="zh-CN">' in zh.text
    assert "用户名" in zh.text and "密码" in zh.text
    assert '<html lang="en">' in en.text and "Username" in en.text
    assert '<html lang="en">' in switched.text
    for page in (zh, en):
        assert 'name="username"' in page.text and 'name="password"' in page.text
        assert '<button type="submit">' in page.text
        assert csrf_token(page.text)
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"


def test_sign_in_sets_a_hashed_rotating_session_cookie(live_server: LiveServer) -> None:
    services = live_server.services
    alice = make_user(services, "alice", "correct horse 1", display_name="王小丽")
    with httpx.Client(base_url=live_server.url) as client:
        first = login(client, "alice", "correct horse 1")
        assert first.status_code == 200, first.text
        assert "王小丽" in first.text
        (header,) = _set_cookie_headers(first, COOKIE_NAME)
        lowered = header.lower()
        assert "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
        assert "secure" not in lowered  # the issuer is plain http here
        cookie1 = client.cookies[COOKIE_NAME]
        second = login(client, "alice", "correct horse 1")
        assert second.status_code == 200
        cookie2 = client.cookies[COOKIE_NAME]
    assert cookie1 != cookie2
    with services.engine.connect() as conn:
        rows = conn.execute(select(sso_sessions).where(sso_sessions.c.user_id == alice.id)).all()
    # Signing in again rotates the cookie but keeps the one session (and its sid).
    assert len(rows) == 1
    assert rows[0].id_hash == sha256_hex(cookie2) and rows[0].id_hash != sha256_hex(cookie1)
    assert services.sessions.resolve(cookie1) is None
    assert services.sessions.resolve(cookie2) is not None
    ok = events(services, "login.succeeded")
    assert len(ok) == 2 and ok[0]["actor_id"] == alice.sub


def test_failures_are_generic_and_audited_with_reasons(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "bob", "bob-password-1")
    with httpx.Client(base_url=live_server.url, headers={"Accept-Language": "en"}) as client:
        unknown = login(client, "nobody", "whatever-1")
        wrong = login(client, "bob", "not-his-password")
    assert unknown.status_code == wrong.status_code == 401
    for page in (unknown, wrong):
        assert "Wrong username or password." in page.text
        assert COOKIE_NAME not in page.cookies
    # The page keeps the typed name but says nothing about whether it exists.
    assert unknown.text.replace("nobody", "X") == wrong.text.replace("bob", "X").replace(
        csrf_token(wrong.text), csrf_token(unknown.text)
    )
    failed = events(services, "login.failed")
    assert [e["details"]["reason"] for e in failed] == ["unknown_user", "bad_password"]
    assert all("password" not in str(e["details"]).replace("bad_password", "") for e in failed)
    # A name that is no account is never stored as typed (it may be a misplaced password),
    # only as a keyed fingerprint that is the same for the same text.
    assert failed[0]["target"] is None and "nobody" not in str(failed[0])
    assert failed[1]["target"] == "bob"
    with httpx.Client(base_url=live_server.url) as client:
        login(client, "nobody", "again-2")
        login(client, "nobody-else", "again-3")
    prints = [e["details"].get("typed_name_fingerprint") for e in events(services, "login.failed")]
    assert prints[0] == prints[2] != prints[3] and prints[0] and prints[1] is None


def test_lockout_after_repeated_failures(live_server: LiveServer) -> None:
    services = live_server.services
    carol = make_user(services, "carol", "carol-password-1")
    limit = services.authenticator.lockout.max_failures
    with httpx.Client(base_url=live_server.url) as client:
        for _ in range(limit):
            assert login(client, "carol", "guess-guess").status_code == 401
        locked = login(client, "carol", "carol-password-1")
    assert locked.status_code == 401
    reasons = [e["details"]["reason"] for e in events(services, "login.failed")]
    assert reasons[-1] == "locked" and reasons.count("bad_password") == limit
    assert services.identity.get_user(carol.id).is_locked(services.clock.now())  # type: ignore[union-attr]


def test_disabled_user_cannot_sign_in(live_server: LiveServer) -> None:
    services = live_server.services
    dave = make_user(services, "dave", "dave-password-1")
    services.identity.set_disabled(dave.id, True, reason="left")
    with httpx.Client(base_url=live_server.url) as client:
        assert login(client, "dave", "dave-password-1").status_code == 401
    assert events(services, "login.failed")[-1]["details"]["reason"] == "disabled"


def test_csrf_token_is_required_and_bound_to_the_cookie(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "erin", "erin-password-1")
    with httpx.Client(base_url=live_server.url) as client:
        page = client.get("/login")
        fields = hidden_fields(page.text)
        no_token = client.post("/login", data={"username": "erin", "password": "erin-password-1"})
        # The token from one browser is useless with another browser's cookie.
        with httpx.Client(base_url=live_server.url) as other:
            other.get("/login")
            stolen = other.post(
                "/login", data={**fields, "username": "erin", "password": "erin-password-1"}
            )
        good = post_login(client, page, "erin", "erin-password-1")
    assert no_token.status_code == 400 and stolen.status_code == 400
    assert COOKIE_NAME not in no_token.cookies and COOKIE_NAME not in stolen.cookies
    assert good.status_code == 200 and COOKIE_NAME in good.cookies
    assert len(events(services, "login.succeeded")) == 1


def test_directory_unreachable_has_its_own_message(live_server: LiveServer) -> None:
    services = live_server.services
    services.identity.create_user(username="frank", source="ldap:corp", external_id="frank")
    with httpx.Client(base_url=live_server.url) as client:
        zh = login(client, "frank", "whatever-1")
    assert zh.status_code == 503
    assert "目录服务暂时无法连接" in zh.text
    assert events(services, "login.failed")[-1]["details"]["reason"] == "directory_unreachable"


def test_return_to_only_goes_back_to_authorize(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "gina", "gina-password-1")
    with httpx.Client(base_url=live_server.url) as client:
        outside = login(client, "gina", "gina-password-1", return_to="https://evil.example/")
        assert outside.status_code == 200 and "location" not in outside.headers
        back = login(client, "gina", "gina-password-1", return_to="/authorize?client_id=x")
    assert back.status_code == 303 and back.headers["location"] == "/authorize?client_id=x"


def test_secure_cookie_when_the_issuer_is_https(
    make_settings: Callable[..., object], make_services: Callable[..., object], db_url: str
) -> None:
    settings = make_settings(db_url, issuer="https://sso.example.test")
    services = make_services(settings)
    make_user(services, "hana", "hana-password-1")  # type: ignore[arg-type]
    with serve(services, free_port()) as url, httpx.Client(base_url=url) as client:  # type: ignore[arg-type]
        page = client.get("/login")
        (csrf_header,) = _set_cookie_headers(page, "idhub_csrf")
        # httpx keeps Secure cookies away from http URLs, so send the form by hand.
        csrf_cookie = csrf_header.split(";")[0].split("=", 1)[1]
        fields = {**hidden_fields(page.text), "username": "hana", "password": "hana-password-1"}
        done = client.post("/login", data=fields, headers={"Cookie": f"idhub_csrf={csrf_cookie}"})
    assert "secure" in csrf_header.lower()
    (header,) = _set_cookie_headers(done, COOKIE_NAME)
    assert "secure" in header.lower() and "httponly" in header.lower()


def test_username_case_does_not_matter(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "ivan", "ivan-password-1")
    with httpx.Client(base_url=live_server.url) as client:
        assert login(client, "Ivan", "ivan-password-1").status_code == 200
        assert login(client, "IVAN ", "wrong-password").status_code == 401
    assert [e["details"]["reason"] for e in events(services, "login.failed")] == ["bad_password"]


def test_language_switch_after_a_failed_attempt_keeps_the_request(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "jack", "jack-password-1")
    return_to = "/authorize?client_id=oa&state=a%26b"
    with httpx.Client(base_url=live_server.url, headers={"Accept-Language": "zh-CN"}) as client:
        page = client.get("/login", params={"return_to": return_to})
        failed = post_login(client, page, "jack", "nope-nope-nope")
        assert failed.status_code == 401
        switch = re.search(r'class="lang" href="([^"]+)"', failed.text)
        assert switch is not None
        english = client.get("/login" + html.unescape(switch.group(1)))
    assert '<html lang="en">' in english.text
    assert hidden_fields(english.text)["return_to"] == return_to


def test_a_failed_sign_in_still_names_the_system(live_server: LiveServer) -> None:
    from tests.sso_support import register_client

    services = live_server.services
    make_user(services, "kim", "kim-password-1")
    register_client(services, "oa")  # named "OA"
    return_to = "/authorize?client_id=oa&response_type=code"
    for lang, line in (("zh-CN", "登录后将继续访问 <strong>OA</strong>"),
                       ("en", "After signing in you continue to <strong>OA</strong>")):  # fmt: skip
        with httpx.Client(base_url=live_server.url, headers={"Accept-Language": lang}) as client:
            page = client.get("/login", params={"return_to": return_to})
            assert line in page.text
            failed = post_login(client, page, "kim", "wrong-password")
            assert failed.status_code == 401 and line in failed.text
            expired = client.post("/login", data={"return_to": return_to, "username": "kim"})
            assert expired.status_code == 400 and line in expired.text


def test_the_page_after_a_plain_sign_in_is_useful(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "lin", "lin-password-1", display_name="林小红",
              department_path="/总部/行政部")  # fmt: skip
    with httpx.Client(base_url=live_server.url, headers={"Accept-Language": "zh-CN"}) as client:
        signed_in = login(client, "lin", "lin-password-1")
        assert signed_in.status_code == 200
        again = client.get("/login")  # a browser already signed in gets the same page
        account = client.get("/account/security")
    for page in (signed_in, again):
        assert "<h1>您已登录</h1>" in page.text
        assert "林小红" in page.text and "/总部/行政部" in page.text
        assert re.search(r"登录时间</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d UTC</dd>", page.text)
        assert '<a href="/account/security" id="account-link">' in page.text
        assert 'action="/logout"' in page.text
    assert account.status_code == 200 and "账号安全" in account.text


def test_error_pages_speak_the_page_language(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as client:
        zh = client.get("/no-such-page", headers={"Accept": "text/html", "Accept-Language": "zh"})
        en = client.get("/no-such-page", headers={"Accept": "text/html", "Accept-Language": "en"})
        chosen = client.get("/no-such-page?lang=zh-CN", headers={"Accept": "text/html"})
        api = client.get("/no-such-page", headers={"Accept": "application/json"})
        method = client.put("/login", headers={"Accept": "text/html", "Accept-Language": "zh"})
    assert zh.status_code == 404 and '<html lang="zh-CN">' in zh.text
    assert "您访问的页面不存在" in zh.text and "Not Found" not in zh.text
    assert "出错了" in zh.text
    assert en.status_code == 404 and "There is no page at this address" in en.text
    assert "您访问的页面不存在" in chosen.text
    # systems reading JSON keep the stable English error
    assert api.json()["error"] == "not_found"
    assert method.status_code == 405 and "该地址不支持这种请求方式" in method.text
