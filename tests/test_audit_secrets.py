"""The "never in the log" scan that runs after every test must itself be able to fail:
plant each kind of secret in a real audit table (bypassing the redaction in `record`, as
a careless future code path might) and check the scan names it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idhub.bootstrap import Services
from idhub.core.audit import Actor, EventType, RequestContext
from idhub.core.crypto import KeyedHasher, new_token, sha256_hex
from tests.audit_scan import KnownSecrets, Scanner
from tests.conftest import TEST_SECRET_KEY

JWT = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"


def _plant(services: Services, *, details: dict[str, Any] | None = None, **columns: Any) -> None:
    """Appends a proper event, then edits a field with SQL the way a leak would look."""
    services.audit.record(EventType.TOKEN_ISSUED, actor=Actor("client", "oa"), target="oa")
    sets = {**columns}
    if details is not None:
        sets["details"] = json.dumps(details)
    assignments = ", ".join(f"{k} = :{k}" for k in sets)
    with services.engine.begin() as conn:
        last = conn.execute(text("SELECT MAX(seq) FROM audit_events")).scalar()
        statement = f"UPDATE audit_events SET {assignments} WHERE seq = :seq"  # noqa: S608
        conn.execute(text(statement), {**sets, "seq": last})


def _scan(services: Services, known: KnownSecrets | None = None) -> list[str]:
    scanner = Scanner(TEST_SECRET_KEY, known or KnownSecrets())
    return scanner.scan_database(services.settings.database.url)


def _cleanup(services: Services) -> None:
    # The planted rows must not fail this test's own after-test scan.
    with services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))


def test_clean_events_pass(services: Services) -> None:
    services.audit.record(
        EventType.LOGIN_FAILED,
        actor=Actor("user", "alice"),
        outcome="failure",
        details={"reason": "bad_password", "jti": new_token(16), "hash": "ab" * 32},
        ctx=RequestContext("127.0.0.1", "Mozilla/5.0", "req12345"),
    )
    assert _scan(services) == []


def test_registered_secret_is_found(services: Services, known_secrets: KnownSecrets) -> None:
    password = "Corr3ct-Horse-" + new_token(6)
    known = KnownSecrets()
    known.add(password)
    _plant(services, details={"note": f"user typed {password} by mistake"})
    problems = _scan(services, known)
    assert len(problems) == 1 and "details.note: holds a registered secret value" in problems[0]
    _cleanup(services)


def test_server_secret_key_and_jwt_are_found(services: Services) -> None:
    _plant(services, user_agent=f"agent {TEST_SECRET_KEY}")
    _plant(services, target=f"Bearer {JWT}")
    problems = _scan(services)
    assert any("user_agent: holds a registered secret value" in p for p in problems)
    assert any("target: holds a JWT" in p for p in problems)
    _cleanup(services)


def test_codes_cookies_client_secrets_and_refresh_tokens_are_found_by_digest(
    services: Services,
) -> None:
    code, cookie, client_secret, refresh = (new_token() for _ in range(4))
    now = 1_800_000_000.0
    refresh_hash = KeyedHasher(services.settings.require_secret_key(), "refresh-token").hash(
        refresh
    )
    secret_hash = KeyedHasher(services.settings.require_secret_key(), "client-secret").hash(
        client_secret
    )
    with services.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO authorization_codes (code_hash, client_id, user_id, redirect_uri,"
                " scope, auth_time, amr, created_at, expires_at) VALUES"
                " (:h, 'oa', 1, 'https://oa/cb', 'openid', :t, '[]', :t, :t)"
            ),
            {"h": sha256_hex(code), "t": now},
        )
        conn.execute(
            text(
                "INSERT INTO clients (client_id, secret_hash, public, first_party,"
                " token_endpoint_auth_method, redirect_uris, post_logout_redirect_uris,"
                " grant_types, response_types, scope, id_token_signed_response_alg,"
                " access_token_signed_response_alg, allowed_audiences,"
                " backchannel_logout_session_required, disabled, name, created_at, updated_at)"
                " VALUES ('oa', :s, false, false, 'client_secret_basic', '[]', '[]', '[]',"
                " '[]', 'openid', 'RS256', 'ES256', '[]', true, false, 'OA', :t, :t)"
            ),
            {"s": secret_hash, "t": now},
        )
        conn.execute(
            text(
                "INSERT INTO refresh_families (id, client_id, user_id, scope, created_at)"
                " VALUES ('fam1', 'oa', 1, 'openid', :t)"
            ),
            {"t": now},
        )
        conn.execute(
            text(
                "INSERT INTO refresh_tokens (token_hash, family_id, issued_at, expires_at)"
                " VALUES (:h, 'fam1', :t, :t)"
            ),
            {"h": refresh_hash, "t": now},
        )
    _plant(services, details={"redirect": f"https://oa/cb?code={code}&state=x"})
    _plant(services, details={"cookie_value": cookie})  # not stored: only the shape rule
    _plant(services, details={"error": f"bad client {client_secret}"})
    _plant(services, request_id=refresh[:64])
    problems = "\n".join(_scan(services))
    assert "details.redirect: an authorization code or session cookie" in problems
    assert "details.cookie_value: a token-shaped value under a secret-ish key" in problems
    assert "details.error: a client secret stored in this database" in problems
    assert "request_id: a refresh token stored in this database" in problems
    _cleanup(services)


def test_sink_and_export_files_are_scanned(tmp_path: Path) -> None:
    known = KnownSecrets()
    known.add("hunter2-but-longer")
    plain, packed = tmp_path / "audit.jsonl", tmp_path / "old.jsonl.gz"
    plain.write_text(json.dumps({"seq": 1, "details": {"x": "hunter2-but-longer"}}) + "\n")
    with gzip.open(packed, "wt") as handle:
        handle.write(json.dumps({"seq": 2, "details": {"t": JWT}}) + "\n")
    problems = Scanner(TEST_SECRET_KEY, known).scan_files([plain, packed])
    assert problems == [
        "audit.jsonl:1 details.x: holds a registered secret value",
        "old.jsonl.gz:1 details.t: holds a JWT or a private key",
    ]
    plain.unlink()
    packed.unlink()


def test_every_database_a_test_touches_is_tracked(
    make_settings: Any, make_services: Any, sqlite_db_url: str, request: pytest.FixtureRequest
) -> None:
    from tests.conftest import _ENGINES

    services = make_services(make_settings(sqlite_db_url))
    services.audit.record(EventType.USER_CREATED, actor=Actor("admin", "root"))
    assert sqlite_db_url in _ENGINES.urls


def test_the_after_test_scan_fails_a_leaking_test(tmp_path: Path) -> None:
    """End to end: a throwaway test that leaks a registered password through the real
    fixtures errors at teardown with the scan's message; a clean one passes."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import *  # noqa: F403\n"
        "from tests.conftest import _audit_holds_no_secrets  # noqa: F401\n",
        encoding="utf-8",
    )
    (tmp_path / "test_leaky.py").write_text(
        "from idhub.core.audit import Actor, EventType\n\n"
        "def _services(make_settings, make_services, sqlite_db_url):\n"
        "    return make_services(make_settings(sqlite_db_url))\n\n"
        "def test_leaks(make_settings, make_services, sqlite_db_url, known_secrets):\n"
        "    known_secrets.add('Leaky-Passw0rd-42')\n"
        "    s = _services(make_settings, make_services, sqlite_db_url)\n"
        "    s.audit.record(EventType.LOGIN_FAILED, actor=Actor('user'),\n"
        "                   target='alice Leaky-Passw0rd-42', outcome='failure')\n\n"
        "def test_clean(make_settings, make_services, sqlite_db_url):\n"
        "    s = _services(make_settings, make_services, sqlite_db_url)\n"
        "    s.audit.record(EventType.LOGIN_FAILED, actor=Actor('user'), target='alice',\n"
        "                   outcome='failure')\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(repo)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(tmp_path / "test_leaky.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    out = result.stdout + result.stderr
    # pytest counts the leaking test's call as passed and its teardown as the error.
    assert "2 passed, 1 error" in out, out
    assert "ERROR at teardown of test_leaks" in out
    assert "target: holds a registered secret value" in out
    assert "Leaky-Passw0rd-42" not in out.split("secrets reached the audit trail", 1)[1]
