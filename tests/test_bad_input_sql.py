"""SQL injection through the audit filters: the audit API's query parameters and
`idhub audit search`, on SQLite and PostgreSQL.

Every filter is a bound parameter, and a `prefix.*` event-type filter names a family that
exists (LIKE's own wildcards are escaped besides). A quote, a comment, a UNION or a
wildcard matches only itself (so nothing here), the trail is intact afterwards, and the
database still answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from idhub.adapters.db import audit_events, users
from idhub.bootstrap import Services
from idhub.config import load_settings
from idhub.core.audit import Actor, EventType
from tests.audit_scan import KnownSecrets
from tests.conftest import TEST_SECRET_KEY, LiveServer
from tests.oidc_support import prepare

ADMIN_TOML = '[server]\nadmin_clients = ["auditor"]\n'
INJECTIONS = (
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    "alice'; DROP TABLE audit_events; --",
    "x' UNION SELECT seq, ts, event_type FROM audit_events --",
    "%",
    "_",
    "%alice%",
    "ali_e",
    "*",
    "\\",
    "alice\\' OR 1=1 #",
    "1; SELECT pg_sleep(5)",
    "$1",
    "?",
    ":target",
)


def _seed(services: Services) -> None:
    for kind in (EventType.TOKEN_REFRESHED, EventType.REFRESH_REUSE_DETECTED):
        services.audit.record(kind, actor=Actor("user", "alice"), target="client:oa")
    services.audit.record(
        EventType.LOGIN_FAILED, actor=Actor("user", "alice"), target="oa", outcome="failure"
    )


def _table_sizes(services: Services) -> tuple[int, int]:
    with services.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(audit_events)).scalar_one(),
            conn.execute(select(func.count()).select_from(users)).scalar_one(),
        )


@pytest.fixture
def server(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    live = make_live_server(db_url, toml=ADMIN_TOML)
    prepare(live.services)
    _seed(live.services)
    return live


def _token(server: LiveServer, known: KnownSecrets) -> str:
    _, secret = server.services.clients.register(
        "auditor", grant_types=["client_credentials"], scope="audit:read"
    )
    response = httpx.post(
        server.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": "audit:read"},
        auth=("auditor", secret or ""),
    )
    token = str(response.json()["access_token"])
    known.add(secret, token)
    return token


def test_audit_api_filters_are_parameters(server: LiveServer, known_secrets: KnownSecrets) -> None:
    token = _token(server, known_secrets)
    headers = {"Authorization": f"Bearer {token}"}

    def search(**params: str) -> httpx.Response:
        return httpx.get(server.url + "/api/v1/audit", params=params, headers=headers)

    sizes = _table_sizes(server.services)
    everything = search(limit="1000").json()["events"]
    assert len(everything) == sizes[0]
    for payload in INJECTIONS:
        for name in ("actor", "target"):
            for value in (payload, "user:" + payload, "client:oa" + payload):
                response = search(**{name: value})
                assert response.status_code == 200, (name, value, response.text[:200])
                assert response.json()["events"] == [], (name, value)
        for name in ("type", "since", "until", "outcome", "order", "limit", "cursor"):
            response = search(**{name: payload})
            assert response.status_code == 400, (name, payload, response.text[:200])
            assert response.json()["error"] == "invalid_request"
    # LIKE wildcards in a family name are literal characters: no family is called that.
    for family in ("%.*", "_.*", "tok_n.*", "token%.*"):
        assert search(type=family).status_code == 400, family
    family = {e["event_type"] for e in search(type="token.*").json()["events"]}
    # (the auditor's own token is in the trail too)
    assert family == {"token.refresh_reuse_detected", "token.refreshed", "token.issued"}
    assert _table_sizes(server.services) == sizes
    assert len(search(limit="1000").json()["events"]) == sizes[0]


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    path = tmp_path / "idhub.toml"
    path.write_text(f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n', encoding="utf-8")
    return path


def test_cli_audit_search_filters_are_parameters(
    run_cli: Any, config: Path, make_services: Callable[..., Services]
) -> None:
    services = make_services(load_settings(config, env={}))
    _seed(services)
    sizes = _table_sizes(services)
    for payload in INJECTIONS:
        for option in ("--actor", "--target"):
            result = run_cli("audit", "search", option, payload, "--json", config=config)
            assert result.code == 0, (option, payload, result.err)
            assert json.loads(result.out) == [], (option, payload)
        for option in ("--type", "--since", "--until"):
            result = run_cli("audit", "search", option, payload, config=config)
            assert result.code == 2 and "Traceback" not in result.err, (option, payload)
    for family in ("%.*", "_.*", "tok_n.*"):
        assert run_cli("audit", "search", "--type", family, config=config).code == 2, family
    result = run_cli("audit", "search", "--type", "token.*", "--json", config=config)
    assert len(json.loads(result.out)) == 2
    assert _table_sizes(services) == sizes
    result = run_cli("audit", "verify", config=config)
    assert result.code == 0, result.err
