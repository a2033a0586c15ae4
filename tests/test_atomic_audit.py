"""A state change and its audit event commit together or not at all, on SQLite and PostgreSQL.

For every change that has an event (refresh rotation, code redemption, consent, session start
and end, revocation, client and user changes, key rotation, sync batches) two real failures
are injected with a database trigger - the database itself refuses the statement, nothing is
mocked:

* the audit append fails: the change must not have happened (and the client is told 503);
* the change's own write fails: no event may claim it.

The refresh case also checks the fault this was built for: the retry after a failed audit
write succeeds and is not taken for reuse (the family stays alive, no false alarm).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from idhub.adapters.db import (
    audit_events,
    authorization_codes,
    cas_services,
    clients,
    consents,
    departments,
    mfa_recovery_codes,
    refresh_families,
    refresh_tokens,
    signing_keys,
    sso_sessions,
    throttle_counters,
    users,
)
from idhub.bootstrap import Services
from idhub.core.audit import Actor, RequestContext
from idhub.errors import AuditError, Conflict, StorageError
from tests.audit_scan import KnownSecrets
from tests.conftest import TEST_SECRET_KEY, CliResult
from tests.oidc_support import Oidc, endpoint, make_user, prepare, reply
from tests.slapd import SOURCE_ENV, Slapd, source_toml

PASSWORD = "Atomic-Audit-Passw0rd"
CTX = RequestContext("127.0.0.1", "pytest", "req-atomic")


# ------------------------------------------------------------------ failure injection


@contextlib.contextmanager
def refused(engine: Engine, table: str, operation: str) -> Iterator[None]:
    """Makes the database refuse every `operation` (INSERT/UPDATE/DELETE) on `table` until
    the block ends: a real failure inside the real transaction."""
    name = f"idhub_refuse_{table}_{operation.lower()}"
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION idhub_refuse() RETURNS trigger LANGUAGE plpgsql "
                    "AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION idhub_refuse()"
                )
            )
    try:
        yield
    finally:
        with engine.begin() as conn:
            on = "" if engine.dialect.name == "sqlite" else f" ON {table}"
            conn.execute(text(f"DROP TRIGGER {name}{on}"))


def count(services: Services, query: Any) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def events_of(services: Services, event_type: str) -> int:
    return count(
        services,
        select(func.count())
        .select_from(audit_events)
        .where(audit_events.c.event_type == event_type),
    )


@pytest.fixture
def oidc(services: Services, known_secrets: KnownSecrets) -> Oidc:
    return Oidc.ready(services, known_secrets)


def rotated(oidc: Oidc, token: str) -> bool:
    token_hash = oidc.services.token_minter.refresh_hash(token)
    return bool(
        count(
            oidc.services,
            select(func.count())
            .select_from(refresh_tokens)
            .where(
                refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.rotated_at.is_not(None)
            ),
        )
    )


# ------------------------------------------------------------------ refresh rotation


def test_refresh_rotation_stands_only_with_its_event(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    first = oidc.tokens()
    known_secrets.add(first["refresh_token"], first["access_token"])
    with refused(services.engine, "audit_events", "INSERT"):
        failed = oidc.refresh(first["refresh_token"])
    assert failed.status == 503 and reply(failed)["error"] == "temporarily_unavailable"
    assert "access_token" not in reply(failed)
    assert not rotated(oidc, first["refresh_token"]), "the rotation stood without its event"
    # The retry is an ordinary refresh: no reuse alarm, the family lives on.
    retried = oidc.refresh(first["refresh_token"])
    assert retried.status == 200, retried
    known_secrets.add(reply(retried)["refresh_token"], reply(retried)["access_token"])
    assert events_of(services, "token.refresh_reuse_detected") == 0
    assert events_of(services, "token.refreshed") == 1
    assert (
        count(services, select(func.count()).where(refresh_families.c.revoked_at.is_not(None))) == 0
    )


def test_refresh_rotation_that_fails_leaves_no_event(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    first = oidc.tokens()
    known_secrets.add(first["refresh_token"], first["access_token"])
    with refused(oidc.services.engine, "refresh_tokens", "UPDATE"):
        failed = oidc.refresh(first["refresh_token"])
    assert failed.status == 503
    assert events_of(oidc.services, "token.refreshed") == 0


def test_reuse_revocation_stands_only_with_its_alarm(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    first = oidc.tokens()
    second = reply(oidc.refresh(first["refresh_token"]))
    third = reply(oidc.refresh(second["refresh_token"]))
    known_secrets.add(first["refresh_token"], second["refresh_token"], third["refresh_token"])
    revoked = select(func.count()).where(refresh_families.c.revoked_at.is_not(None))
    with refused(services.engine, "audit_events", "INSERT"):
        assert oidc.refresh(first["refresh_token"]).status == 503
    assert count(services, revoked) == 0, "the family was revoked without the reuse alarm"
    assert reply(oidc.refresh(first["refresh_token"]))["error"] == "invalid_grant"
    assert count(services, revoked) == 1
    assert events_of(services, "token.refresh_reuse_detected") == 1


# ------------------------------------------------------------------ code redemption


def test_code_redemption_stands_only_with_its_event(
    oidc: Oidc, known_secrets: KnownSecrets
) -> None:
    services = oidc.services
    code = oidc.code()
    used = select(func.count()).where(authorization_codes.c.used_at.is_not(None))
    with refused(services.engine, "audit_events", "INSERT"):
        failed = oidc.redeem(code)
    assert failed.status == 503 and "access_token" not in reply(failed)
    assert count(services, used) == 0
    assert count(services, select(func.count()).select_from(refresh_families)) == 0
    answer = oidc.redeem(code)  # the client's retry works: nothing was used up
    assert answer.status == 200, answer
    known_secrets.add(reply(answer)["refresh_token"], reply(answer)["access_token"])
    assert events_of(services, "token.issued") == 1


def test_code_redemption_that_fails_leaves_no_event(oidc: Oidc) -> None:
    with refused(oidc.services.engine, "refresh_families", "INSERT"):
        failed = oidc.redeem(oidc.code())
    assert failed.status == 503
    assert events_of(oidc.services, "token.issued") == 0
    used = select(func.count()).where(authorization_codes.c.used_at.is_not(None))
    assert count(oidc.services, used) == 0


# ------------------------------------------------------------------ revocation


def test_revocation_stands_only_with_its_event(oidc: Oidc, known_secrets: KnownSecrets) -> None:
    services = oidc.services
    tokens = oidc.tokens()
    known_secrets.add(tokens["refresh_token"], tokens["access_token"])
    form = {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
    revoked = select(func.count()).where(refresh_families.c.revoked_at.is_not(None))
    with refused(services.engine, "audit_events", "INSERT"):
        assert endpoint(services, "/revoke", form, oidc.secret).status == 503
    assert count(services, revoked) == 0
    with refused(services.engine, "refresh_families", "UPDATE"):
        assert endpoint(services, "/revoke", form, oidc.secret).status == 503
    assert events_of(services, "token.revoked") == 0
    assert endpoint(services, "/revoke", form, oidc.secret).status == 200
    assert count(services, revoked) == 1 and events_of(services, "token.revoked") == 1


# ------------------------------------------------------------------ consent, sessions


def test_consent_stands_only_with_its_event(services: Services) -> None:
    user = make_user(services)
    granted = select(func.count()).select_from(consents)

    def grant() -> None:
        services.consents.record(user, client_id="oa", scopes=["openid"], allowed=True, ctx=CTX)

    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        grant()
    assert count(services, granted) == 0
    with refused(services.engine, "consents", "INSERT"), pytest.raises(StorageError):
        grant()
    assert events_of(services, "consent.granted") == 0
    grant()
    assert count(services, granted) == 1 and events_of(services, "consent.granted") == 1


def _local_user(services: Services, known_secrets: KnownSecrets) -> Any:
    known_secrets.add(PASSWORD)
    user = make_user(services, "lisi")
    services.identity.set_password_hash(user.id, services.password_hasher.hash(PASSWORD))
    return user


def test_session_start_stands_only_with_its_event(
    services: Services, known_secrets: KnownSecrets
) -> None:
    _local_user(services, known_secrets)
    started = select(func.count()).select_from(sso_sessions)

    def sign_in() -> None:
        services.signin.password_sign_in("lisi", PASSWORD, cookie=None, ctx=CTX)

    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        sign_in()
    assert count(services, started) == 0
    with refused(services.engine, "sso_sessions", "INSERT"), pytest.raises(StorageError):
        sign_in()
    assert events_of(services, "login.succeeded") == 0
    sign_in()
    assert count(services, started) == 1 and events_of(services, "login.succeeded") == 1


def test_session_end_stands_only_with_its_event(
    services: Services, known_secrets: KnownSecrets
) -> None:
    user = _local_user(services, known_secrets)
    signed_in = services.signin.password_sign_in("lisi", PASSWORD, cookie=None, ctx=CTX)
    known_secrets.add(signed_in.cookie)
    ended = select(func.count()).where(sso_sessions.c.ended_at.is_not(None))

    def end() -> bool:
        return services.logout.end_session(
            signed_in.session.sid, reason="logout", actor=Actor("user", user.sub), ctx=CTX
        )

    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        end()
    assert count(services, ended) == 0
    with refused(services.engine, "sso_sessions", "UPDATE"), pytest.raises(StorageError):
        end()
    assert events_of(services, "session.logout") == 0
    assert end() is True
    assert count(services, ended) == 1 and events_of(services, "session.logout") == 1


# ------------------------------------------------------------------ clients, keys


def test_client_changes_stand_only_with_their_events(services: Services) -> None:
    stored = select(func.count()).select_from(clients)

    def register() -> None:
        services.clients.register("batch", grant_types=["client_credentials"], scope="authz")

    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        register()
    assert count(services, stored) == 0
    # SQLite reports a trigger's refusal as a constraint, which the store reports as a clash.
    with refused(services.engine, "clients", "INSERT"), pytest.raises((StorageError, Conflict)):
        register()
    assert events_of(services, "client.created") == 0
    register()
    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        services.clients.remove("batch")
    assert count(services, stored) == 1, "the client was removed without its event"
    services.clients.remove("batch")
    assert count(services, stored) == 0 and events_of(services, "client.removed") == 1


def test_key_rotation_stands_only_with_its_event(services: Services) -> None:
    prepare(services)
    keys = select(func.count()).select_from(signing_keys)
    before = count(services, keys)
    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        services.keys.rotate(("ES256",))
    assert count(services, keys) == before
    with refused(services.engine, "signing_keys", "INSERT"), pytest.raises(StorageError):
        services.keys.rotate(("ES256",))
    assert events_of(services, "key.rotated") == 0
    services.keys.rotate(("ES256",))
    assert count(services, keys) == before + 1 and events_of(services, "key.rotated") == 1


# ------------------------------------------------------------------ user changes (the CLI)


def _cli_config(tmp_path: Path, db_url: str) -> Path:
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    config = tmp_path / "cli.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n\n[policy]\nwatch = false\n',
        encoding="utf-8",
    )
    return config


def test_user_changes_stand_only_with_their_events(
    services: Services,
    db_url: str,
    tmp_path: Path,
    run_cli: Callable[..., CliResult],
) -> None:
    config = _cli_config(tmp_path, db_url)
    add = ("user", "add", "wangwu", "--name", "王五", "--no-password")
    with refused(services.engine, "audit_events", "INSERT"):
        assert run_cli(*add, config=config).code != 0
    assert count(services, select(func.count()).select_from(users)) == 0
    with refused(services.engine, "users", "INSERT"):
        assert run_cli(*add, config=config).code != 0
    assert events_of(services, "user.created") == 0
    assert run_cli(*add, config=config).code == 0
    disabled = select(func.count()).where(users.c.disabled.is_(True))
    with refused(services.engine, "audit_events", "INSERT"):
        failed = run_cli("user", "disable", "wangwu", "--reason", "left", config=config)
    assert failed.code != 0 and "Traceback" not in failed.err
    assert count(services, disabled) == 0, "the user was disabled without the event"
    assert run_cli("user", "disable", "wangwu", "--reason", "left", config=config).code == 0
    assert count(services, disabled) == 1 and events_of(services, "user.disabled") == 1


def test_throttle_clearing_stands_only_with_its_event(
    services: Services,
    db_url: str,
    tmp_path: Path,
    run_cli: Callable[..., CliResult],
) -> None:
    config = _cli_config(tmp_path, db_url)
    with services.engine.begin() as conn:
        conn.execute(
            throttle_counters.insert().values(
                kind="ip", value="10.0.0.7", failures=9, first_failed_at=1.0,
                last_failed_at=2.0, locked_until=None,
            )
        )  # fmt: skip
    held = select(func.count()).select_from(throttle_counters)
    with refused(services.engine, "audit_events", "INSERT"):
        failed = run_cli("throttle", "clear", "--ip", "10.0.0.7", config=config)
    assert failed.code != 0 and "Traceback" not in failed.err
    assert count(services, held) == 1, "the counter was cleared without the event"
    with refused(services.engine, "throttle_counters", "DELETE"):
        assert run_cli("throttle", "clear", "--ip", "10.0.0.7", config=config).code != 0
    assert events_of(services, "throttle.cleared") == 0
    assert run_cli("throttle", "clear", "--ip", "10.0.0.7", config=config).code == 0
    assert count(services, held) == 0 and events_of(services, "throttle.cleared") == 1


# ------------------------------------------------------------------ sync batches


@pytest.mark.slapd
def test_sync_batches_stand_only_with_their_events(
    slapd_company: Slapd,
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    db_url: str,
) -> None:
    settings = make_settings(
        db_url, toml=source_toml(slapd_company, extra="batch_size = 20"), env=SOURCE_ENV
    )
    services = make_services(settings)
    people = select(func.count()).select_from(users)
    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        services.directory_sync("corp").run(full=True)
    assert count(services, people) == 0, "users were applied without their sync.change events"
    user_events = select(func.count()).where(
        audit_events.c.event_type == "sync.change", audit_events.c.target.like("user:%")
    )
    with refused(services.engine, "users", "INSERT"), pytest.raises(StorageError):
        services.directory_sync("corp").run(full=True)
    # The departments went in (with their events) before the first batch of users failed.
    assert count(services, user_events) == 0
    department_events = select(func.count()).where(
        audit_events.c.event_type == "sync.change", audit_events.c.target.like("department:%")
    )
    assert count(services, select(func.count()).select_from(departments)) == count(
        services, department_events
    )
    services.directory_sync("corp").run(full=True)
    assert count(services, people) == count(services, user_events) > 0


# ------------------------------------------------------------------ beyond the list: CAS, MFA


def test_cas_service_registration_stands_only_with_its_event(services: Services) -> None:
    stored = select(func.count()).select_from(cas_services)

    def register() -> None:
        services.cas_services.register("oa-cas", urls=["https://oa.example.com/cas"])

    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        register()
    assert count(services, stored) == 0
    register()
    assert count(services, stored) == 1 and events_of(services, "cas.service_created") == 1


def test_recovery_codes_stand_only_with_their_event(
    services: Services, known_secrets: KnownSecrets
) -> None:
    user = make_user(services)
    stored = select(func.count()).select_from(mfa_recovery_codes)
    with refused(services.engine, "audit_events", "INSERT"), pytest.raises(AuditError):
        services.mfa.new_recovery_codes(user, ctx=CTX)
    assert count(services, stored) == 0
    codes = services.mfa.new_recovery_codes(user, ctx=CTX)
    known_secrets.add(*codes)
    assert count(services, stored) == len(codes)
    assert events_of(services, "mfa.recovery_codes_issued") == 1
