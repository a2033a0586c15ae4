"""RP-initiated logout, back-channel logout to a real test RP (validating tokens against /jwks),
delivery retries, and `idhub session revoke --user`. SQLite and PostgreSQL, real HTTP."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.common.security import generate_token
from sqlalchemy import select

from idhub.adapters.db import logout_deliveries, sso_sessions
from idhub.bootstrap import Services
from idhub.core.audit import Actor
from idhub.core.clock import FrozenClock
from idhub.core.logout import RETRY_DELAYS
from idhub.core.sessions import COOKIE_NAME
from tests.conftest import LiveServer, free_port, serve
from tests.rp_app import LogoutRp, running_rp
from tests.sso_support import (
    cli_config_for,
    csrf_token,
    events,
    follow,
    hidden_fields,
    make_user,
    oauth_client,
    query_of,
    register_client,
    sign_in_at,
    validate_id_token,
)

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")

SCOPE = "openid profile offline_access"


def _sign_in(
    browser: httpx.Client, issuer: str, client: Any, *, user: str | None, password: str = ""
) -> dict[str, Any]:
    """Runs the code flow in `browser`; signs in on the login page if one appears."""
    verifier = generate_token(48)
    nonce = secrets.token_urlsafe(12)
    url, _ = client.create_authorization_url(
        f"{issuer}/authorize", code_verifier=verifier, nonce=nonce
    )
    response = follow(browser, url)
    if response.status_code == 200 and user is not None:
        response = sign_in_at(browser, response, user, password)
    assert response.status_code == 302, response.text[:300]
    token: dict[str, Any] = client.fetch_token(
        f"{issuer}/token",
        authorization_response=response.headers["location"],
        code_verifier=verifier,
    )
    validate_id_token(issuer, token["id_token"], client_id=client.client_id, nonce=nonce)
    return token


def _refresh_status(
    issuer: str, client_id: str, secret: str, refresh_token: str
) -> tuple[int, str]:
    response = httpx.post(
        f"{issuer}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(client_id, secret),
    )
    return response.status_code, response.json().get("error", "")


def _prompt_none_error(browser: httpx.Client, issuer: str, client: Any) -> str | None:
    url, _ = client.create_authorization_url(
        f"{issuer}/authorize", code_verifier=generate_token(48), prompt="none"
    )
    response = follow(browser, url)
    return query_of(response.headers["location"]).get("error")


def test_rp_initiated_logout_with_id_token_hint(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    alice = make_user(services, "alice", "alice-password-1")
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret, scope=SCOPE)
    with httpx.Client(base_url=issuer) as browser:
        token = _sign_in(browser, issuer, oa, user="alice", password="alice-password-1")
        (session,) = services.sessions.active_for_user(alice.id)
        response = browser.get(
            "/logout",
            params={
                "id_token_hint": token["id_token"],
                "state": "st-1",
                "post_logout_redirect_uri": "http://127.0.0.1:8001/logged-out",
            },
        )
        assert response.status_code == 303
        assert response.headers["location"] == "http://127.0.0.1:8001/logged-out?state=st-1"
        assert COOKIE_NAME not in browser.cookies
        assert _prompt_none_error(browser, issuer, oa) == "login_required"
    ended = services.sessions.get(session.sid)
    assert ended is not None and ended.end_reason == "rp_initiated"
    assert _refresh_status(issuer, "oa", secret, token["refresh_token"]) == (400, "invalid_grant")
    (logout,) = events(services, "session.logout")
    assert logout["details"]["initiator"] == "oa" and logout["details"]["sid"] == session.sid


def test_unregistered_post_logout_uri_gets_a_page(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    bob = make_user(services, "bob", "bob-password-1")
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret, scope=SCOPE)
    with httpx.Client(base_url=issuer, headers={"Accept-Language": "en"}) as browser:
        token = _sign_in(browser, issuer, oa, user="bob", password="bob-password-1")
        response = browser.get(
            "/logout",
            params={
                "id_token_hint": token["id_token"],
                "post_logout_redirect_uri": "https://evil.example/",
            },
        )
        forged = browser.get(
            "/logout",
            params={
                "id_token_hint": token["id_token"][:-4] + "AAAA",
                "post_logout_redirect_uri": "http://127.0.0.1:8001/logged-out",
            },
        )
    assert response.status_code == 400 and "location" not in response.headers
    assert "not registered" in response.text
    # A tampered hint is no hint: without client_id the target cannot be trusted either.
    assert forged.status_code == 400 and "location" not in forged.headers
    assert len(services.sessions.active_for_user(bob.id)) == 1


def test_logout_without_hint_asks_first(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    carol = make_user(services, "carol", "carol-password-1")
    _, secret = register_client(services, "oa")
    oa = oauth_client(issuer, "oa", secret, scope=SCOPE)
    with httpx.Client(base_url=issuer, headers={"Accept-Language": "zh-CN"}) as browser:
        _sign_in(browser, issuer, oa, user="carol", password="carol-password-1")
        page = browser.get(
            "/logout",
            params={
                "client_id": "oa",
                "post_logout_redirect_uri": "http://127.0.0.1:8001/logged-out",
                "state": "s2",
            },
        )
        assert page.status_code == 200 and "确定要退出吗" in page.text
        assert len(services.sessions.active_for_user(carol.id)) == 1
        fields = hidden_fields(page.text)
        no_csrf = browser.post("/logout", data={**fields, "csrf_token": "x", "confirm": "yes"})
        assert no_csrf.status_code == 400
        assert len(services.sessions.active_for_user(carol.id)) == 1
        done = browser.post("/logout", data={**fields, "confirm": "yes"})
    assert csrf_token(page.text)
    assert done.status_code == 303
    assert done.headers["location"] == "http://127.0.0.1:8001/logged-out?state=s2"
    assert services.sessions.active_for_user(carol.id) == []


@contextlib.contextmanager
def _rp(issuer: str) -> Iterator[LogoutRp]:
    with running_rp(issuer, free_port()) as rp:
        yield rp


def test_back_channel_logout_reaches_every_system_of_the_session(live_server: LiveServer) -> None:
    services, issuer = live_server.services, live_server.url
    dave = make_user(services, "dave", "dave-password-1")
    with _rp(issuer) as rp:
        _, oa_secret = register_client(
            services, "oa", port=8001, backchannel_logout_uri=rp.uri("oa")
        )
        _, rb_secret = register_client(
            services, "reimburse", port=8002, backchannel_logout_uri=rp.uri("reimburse")
        )
        oa = oauth_client(issuer, "oa", oa_secret, port=8001, scope=SCOPE)
        rb = oauth_client(issuer, "reimburse", rb_secret, port=8002, scope=SCOPE)
        with httpx.Client(base_url=issuer) as browser:
            oa_token = _sign_in(browser, issuer, oa, user="dave", password="dave-password-1")
            rb_token = _sign_in(browser, issuer, rb, user=None)  # SSO: no login page
            (session,) = services.sessions.active_for_user(dave.id)
            browser.get("/logout", params={"id_token_hint": oa_token["id_token"]})
        received = rp.wait_for(2)
    assert sorted(r["_client"] for r in received) == ["oa", "reimburse"]
    assert {r["sid"] for r in received} == {session.sid}
    assert {r["sub"] for r in received} == {dave.sub}
    assert not rp.rejected
    for client_id, secret, token in (
        ("oa", oa_secret, oa_token),
        ("reimburse", rb_secret, rb_token),
    ):
        assert (
            _refresh_status(issuer, client_id, secret, token["refresh_token"])[1] == "invalid_grant"
        )
    deadline = time.monotonic() + 5
    while len(events(services, "logout.backchannel_delivered")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(events(services, "logout.backchannel_delivered")) == 2
    with services.engine.connect() as conn:
        statuses = conn.execute(select(logout_deliveries.c.status)).scalars().all()
    assert sorted(statuses) == ["delivered", "delivered"]


def test_deliveries_are_retried_then_given_up(
    make_settings: Callable[..., Any], make_services: Callable[..., Services], db_url: str
) -> None:
    port = free_port()
    clock = FrozenClock(time.time() - 30)
    services = make_services(make_settings(db_url, issuer=f"http://127.0.0.1:{port}"), clock=clock)
    # This test drives deliveries itself, step by step, instead of the server's worker.
    services.runtime.remove("logout-delivery")
    with serve(services, port) as issuer, _rp(issuer) as rp:
        dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
        register_client(services, "oa", backchannel_logout_uri=rp.uri("oa"))
        register_client(services, "reimburse", port=8002, backchannel_logout_uri=dead)
        erin = make_user(services, "erin", "erin-password-1")
        _, session = services.sessions.start(erin, amr=["pwd"])
        services.sessions.add_client(session.sid, "oa")
        services.sessions.add_client(session.sid, "reimburse")
        rp.fail_next = 1
        ended = services.logout.logout_user_everywhere(
            erin.id, reason="test", actor=Actor("admin", "test")
        )
        assert ended == 1
        assert services.logout.deliver_due() == (0, 2)
        assert rp.received == [] and rp.hits == 1
        assert services.logout.deliver_due() == (0, 0)  # not due yet
        clock.advance(RETRY_DELAYS[0])
        assert services.logout.deliver_due() == (1, 1)
        (claims,) = rp.wait_for(1)
        assert claims["sid"] == session.sid and claims["sub"] == erin.sub
        for delay in RETRY_DELAYS[1:]:
            clock.advance(delay)
            assert services.logout.deliver_due() == (0, 1)
        clock.advance(86400)
        assert services.logout.deliver_due() == (0, 0)
    with services.engine.connect() as conn:
        rows = {r.client_id: r for r in conn.execute(select(logout_deliveries))}
    assert rows["oa"].status == "delivered" and rows["oa"].attempts == 2
    assert rows["reimburse"].status == "failed"
    assert rows["reimburse"].attempts == len(RETRY_DELAYS) + 1 and rows["reimburse"].last_error
    failures = events(services, "logout.backchannel_failed")
    assert [f["details"]["will_retry"] for f in failures if f["target"] == "reimburse"] == (
        [True] * len(RETRY_DELAYS) + [False]
    )
    assert failures[-1]["outcome"] == "failure"
    assert len(events(services, "logout.backchannel_delivered")) == 1


def test_session_revoke_logs_a_user_out_everywhere(
    live_server: LiveServer, run_cli: Callable[..., Any], tmp_path: Path, db_url: str
) -> None:
    services, issuer = live_server.services, live_server.url
    frank = make_user(services, "frank", "frank-password-1")
    make_user(services, "gina", "gina-password-1")
    with _rp(issuer) as rp:
        _, secret = register_client(services, "oa", backchannel_logout_uri=rp.uri("oa"))
        oa = oauth_client(issuer, "oa", secret, scope=SCOPE)
        # frank on two computers, gina on a third: only frank's sessions end.
        with (
            httpx.Client(base_url=issuer) as pc1,
            httpx.Client(base_url=issuer) as pc2,
            httpx.Client(base_url=issuer) as pc3,
        ):
            t1 = _sign_in(pc1, issuer, oa, user="frank", password="frank-password-1")
            _sign_in(pc2, issuer, oa, user="frank", password="frank-password-1")
            _sign_in(pc3, issuer, oa, user="gina", password="gina-password-1")
            result = run_cli(
                "session", "revoke", "--user", "frank", config=cli_config_for(tmp_path, db_url)
            )
            assert result.code == 0, result.err
            assert "ended 2 session(s)" in result.out
            received = rp.wait_for(2)
            assert _prompt_none_error(pc1, issuer, oa) == "login_required"
            assert _prompt_none_error(pc2, issuer, oa) == "login_required"
            assert _prompt_none_error(pc3, issuer, oa) is None
    assert {r["sub"] for r in received} == {frank.sub}
    assert _refresh_status(issuer, "oa", secret, t1["refresh_token"])[1] == "invalid_grant"
    (revoked,) = events(services, "session.revoked")
    assert revoked["actor_type"] == "admin" and revoked["details"]["sessions"] == 2
    with services.engine.connect() as conn:
        reasons = (
            conn.execute(
                select(sso_sessions.c.end_reason).where(sso_sessions.c.user_id == frank.id)
            )
            .scalars()
            .all()
        )
    assert reasons == ["revoked by an admin"] * 2
    unknown = run_cli(
        "session", "revoke", "--user", "nobody", config=cli_config_for(tmp_path, db_url)
    )
    assert unknown.code == 2 and "no user named 'nobody'" in unknown.err


def test_readiness_reports_the_delivery_worker(live_server: LiveServer) -> None:
    services = live_server.services
    ready = httpx.get(f"{live_server.url}/readyz").json()
    assert ready["checks"]["logout_delivery"] == "ok"
    services.runtime.stop_job("logout-delivery")
    try:
        stopped = httpx.get(f"{live_server.url}/readyz")
        assert stopped.status_code == 503
        assert stopped.json()["checks"]["logout_delivery"] == "back-channel logout worker stopped"
    finally:
        services.runtime.start_job("logout-delivery")


@pytest.mark.parametrize(
    "hint",
    ["a.b.c", "....", "x", "ä.ö.ü", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "e30.e30.e30", "%00"],
)
def test_malformed_hints_never_break_logout(live_server: LiveServer, hint: str) -> None:
    register_client(live_server.services, "oa")
    with httpx.Client(base_url=live_server.url) as browser:
        response = browser.get("/logout", params={"id_token_hint": hint})
        posted = browser.post("/logout", data={"id_token_hint": hint, "confirm": "yes"})
        with_target = browser.get(
            "/logout",
            params={
                "id_token_hint": hint,
                "post_logout_redirect_uri": "http://127.0.0.1:8001/logged-out",
            },
        )
    # No session in this browser: nothing to confirm, nothing ends; never a server error.
    assert response.status_code == 200 and "Traceback" not in response.text
    assert posted.status_code == 400  # a confirmation without the CSRF token
    assert with_target.status_code == 400 and "location" not in with_target.headers
