"""Lockout wording on the login page, secret guessing at the token endpoint, and the unlock
commands, over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer
from tests.sso_support import cli_config_for, csrf_token, events, login, make_user

LOCKED_EN = "Too many attempts. Try again in 15 min."
LOCKED_ZH = "尝试次数过多，请 15 分钟后再试。"


def test_a_locked_account_says_so_whatever_the_password(live_server: LiveServer) -> None:
    services = live_server.services
    make_user(services, "hana", "hana-password-1")
    limit = services.authenticator.lockout.max_failures
    with httpx.Client(base_url=live_server.url, headers={"Accept-Language": "en"}) as client:
        pages = [login(client, "hana", f"guess-{i}") for i in range(limit)]
        right = login(client, "hana", "hana-password-1")
        wrong = login(client, "hana", "another-guess")
    assert "Wrong username or password." in pages[0].text
    # The failure that locks already says so; after it, right and wrong look the same.
    assert LOCKED_EN in pages[-1].text
    for page in (right, wrong):
        assert page.status_code == 401 and LOCKED_EN in page.text
        assert page.headers["retry-after"] == "900"
    assert right.text.replace(csrf_token(right.text), "") == wrong.text.replace(
        csrf_token(wrong.text), ""
    )
    with httpx.Client(base_url=live_server.url, headers={"Accept-Language": "zh-CN"}) as client:
        assert LOCKED_ZH in login(client, "hana", "hana-password-1").text
    assert "hana-password-1" not in str(events(services, "login.failed"))


def test_guessing_a_client_secret_is_throttled_and_audited(server: LiveServer) -> None:
    services = server.services
    _, secret = services.clients.register(
        "batch", grant_types=["client_credentials"], token_endpoint_auth_method="client_secret_post"
    )
    assert secret is not None
    rule = services.throttle.policy.client

    def token(client_secret: str, client_id: str = "batch") -> httpx.Response:
        return httpx.post(
            server.url + "/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
        )

    assert token(secret).status_code == 200
    statuses = [token(f"guess-{i}").status_code for i in range(rule.free + 1)]
    assert statuses == [401] * (rule.free + 1)
    # Inside the delay the right secret is refused too, without being checked.
    refused = token(secret)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert refused.json()["error_description"] == "too many failed attempts"
    throttled = events(services, "client.auth_throttled")
    assert len(throttled) == 1 and throttled[0]["actor_id"] == "batch"
    assert throttled[0]["details"]["scope"] == "client"
    assert secret not in str(throttled)
    # The same failures at introspection count too (one hook for every client authentication).
    intro = httpx.post(
        server.url + "/introspect",
        data={"token": "x", "client_id": "batch", "client_secret": "guess-again"},
    )
    assert intro.status_code == 401
    # An admin clears the address; the client gets its token again.
    services.throttle.apply_clear_source("127.0.0.1")
    assert token(secret).status_code == 200
    assert services.throttle.counts()["refused_client"] >= 1


def test_user_unlock_and_throttle_clear(
    live_server: LiveServer, run_cli: Callable[..., Any], tmp_path: Path, db_url: str
) -> None:
    services = live_server.services
    make_user(services, "ivan", "ivan-password-1")
    config = cli_config_for(tmp_path, db_url)
    limit = services.authenticator.lockout.max_failures
    with httpx.Client(base_url=live_server.url) as client:
        for i in range(limit):
            login(client, "ivan", f"guess-{i}")
        assert login(client, "ivan", "ivan-password-1").status_code == 401
    status = run_cli("throttle", "status", config=config)
    assert status.code == 0, status.err
    assert "user ivan" in status.out and "locked" in status.out
    shown = run_cli("user", "show", "ivan", "--json", config=config)
    assert '"locked": true' in shown.out
    unlocked = run_cli("user", "unlock", "ivan", config=config)
    assert unlocked.code == 0 and "unlocked ivan (was locked" in unlocked.out
    with httpx.Client(base_url=live_server.url) as client:
        assert login(client, "ivan", "ivan-password-1").status_code == 200
    cleared = run_cli("throttle", "clear", "--ip", "127.0.0.1", config=config)
    assert cleared.code == 0 and "cleared 1 counter(s) of ip 127.0.0.1" in cleared.out
    assert run_cli("throttle", "clear", "--ip", "nonsense", config=config).code == 2
    kinds = [e["details"]["scope"] for e in events(services, "throttle.cleared")]
    assert kinds == ["account", "ip"]
