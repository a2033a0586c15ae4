"""A failed audit write is never skipped silently: the caller gets `AuditError`, every caller
sharing the failed group commit learns it, and sign-in and token issuance fail with it (503,
no token handed out)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import Actor, EventType, RequestContext
from idhub.errors import AuditError
from tests.audit_scan import KnownSecrets
from tests.conftest import LiveServer
from tests.oidc_support import prepare


def _break(services: Services) -> None:
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))


def _repair(services: Services) -> None:
    with services.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))


def test_every_caller_of_a_failed_group_commit_gets_the_error(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], tmp_path: Path
) -> None:
    services = make_services(make_settings(f"sqlite:///{tmp_path / 'unmigrated.db'}"))
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def call() -> None:
        start.wait(10)
        try:
            services.audit.record(EventType.LOGIN_SUCCEEDED, actor=Actor("user", "u"))
            outcomes.append("written")
        except AuditError:
            outcomes.append("AuditError")

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a caller hung waiting for a failed batch"
    assert outcomes == ["AuditError"] * 8


def test_token_endpoint_fails_when_the_audit_write_fails(
    make_live_server: Callable[..., LiveServer], sqlite_db_url: str, known_secrets: KnownSecrets
) -> None:
    server = make_live_server(sqlite_db_url)
    prepare(server.services)
    _, secret = server.services.clients.register(
        "batch", grant_types=["client_credentials"], scope="authz",
        token_endpoint_auth_method="client_secret_basic",
    )  # fmt: skip
    known_secrets.add(secret)
    form = {"grant_type": "client_credentials", "resource": "idhub", "scope": "authz"}

    def ask() -> httpx.Response:
        return httpx.post(f"{server.url}/token", data=form, auth=("batch", str(secret)))

    _break(server.services)
    try:
        refused = ask()
    finally:
        _repair(server.services)
    assert refused.status_code == 503, refused.text
    assert "access_token" not in refused.text and "Traceback" not in refused.text
    issued = ask()
    assert issued.status_code == 200
    known_secrets.add(issued.json()["access_token"])
    events = server.services.audit_log.search()
    assert [e.event_type for e in events if e.actor_id == "batch"] == ["token.issued"]


def test_sign_in_fails_when_the_audit_write_fails(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    known_secrets: KnownSecrets,
) -> None:
    services = make_services(make_settings(sqlite_db_url))
    password = "Audit-Failure-Passw0rd"
    known_secrets.add(password)
    user = services.identity.create_user(username="wangwu", display_name="王五")
    services.identity.set_password_hash(user.id, services.password_hasher.hash(password))
    ctx = RequestContext("127.0.0.1", "pytest", "req-failure")
    _break(services)
    try:
        with pytest.raises(AuditError):
            services.authenticator.authenticate("wangwu", password, ctx=ctx)
    finally:
        _repair(services)
    assert services.authenticator.authenticate("wangwu", password, ctx=ctx).username == "wangwu"
    assert [e.event_type for e in services.audit_log.search()] == ["login.succeeded"]
