"""Fuzzing the decision and audit APIs from the OpenAPI document idhub serves.

schemathesis reads `/api/v1/openapi.json` from a live server and generates requests from it:
- negative ones (violating the document) must each be refused with a 4xx, with the audit
  chain, the policy version and the stored accounts exactly as before the run;
- positive ones must never be a 5xx, and every answer must be one the document describes
  (status, content type, body schema, headers);
- without a token, or with a token that is not one, every protected operation is a 401 with
  an RFC 6750 challenge before anything else is looked at.

Runs are bounded (examples per operation, no deadline flakiness) and go to 127.0.0.1 only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import func, select

from idhub.adapters.db import audit_events, clients, users
from idhub.web.pdp_openapi import MAX_TEXT
from tests.conftest import LiveServer
from tests.oidc_support import prepare

TOML = '[server]\nadmin_clients = ["auditor"]\n\n[policy]\nwatch = false\n'
SCOPE = "authz authz:admin audit:read"
EXAMPLES = 150
# Refused by the request limits (web/limits.py) before any handler: rejections too.
LIMITS = (413, 414, 431)
OPEN_PATHS = {"/api/v1/authz/metrics", "/api/v1/openapi.json"}

# hypothesis: a bounded, reproducible run; the live server outlives every example.
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Fuzzed:
    live: LiveServer
    token: str
    schema: Any
    session: requests.Session

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def operations(self) -> Iterator[Any]:
        for result in self.schema.get_all_operations():
            yield result.ok()


def _seed(live: LiveServer) -> None:
    ident = live.services.identity
    ids = {
        name: ident.create_user(username=name, department_path=dept).id
        for name, dept in (("alice", "/总部/华东区/销售一部"), ("bob", "/总部/华东区"))
    }
    ident.set_department_manager("/总部/华东区", ids["bob"])
    assert live.services.authz.refresh_directory()


def _token(live: LiveServer) -> str:
    _, secret = live.services.clients.register(
        "auditor", grant_types=["client_credentials"], scope=SCOPE
    )
    response = httpx.post(
        live.url + "/token",
        data={"grant_type": "client_credentials", "resource": "idhub", "scope": SCOPE},
        auth=("auditor", secret or ""),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture
def fuzzed(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> Iterator[Fuzzed]:
    live = make_live_server(sqlite_db_url, toml=TOML)
    prepare(live.services)
    _seed(live)
    token = _token(live)
    schema = schemathesis.openapi.from_url(live.url + "/api/v1/openapi.json")
    with requests.Session() as session:
        yield Fuzzed(live, token, schema, session)


def state(live: LiveServer) -> dict[str, Any]:
    """What a refused request must leave as it was."""
    with live.services.engine.connect() as conn:
        head = conn.execute(
            select(audit_events.c.seq, audit_events.c.hash)
            .order_by(audit_events.c.seq.desc())
            .limit(1)
        ).first()
        counts = {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (audit_events, users, clients)
        }
    return {"head": tuple(head) if head else None, **counts, "policy": live.services.authz.version}


def _aimed(body: Any) -> Any:
    """The body with every schema-valid `domain` replaced by a configured one, so that a
    negative case is refused for what the document forbids, not for an unknown domain (an
    arbitrary string is a valid domain to the document, so the case stays as invalid)."""
    if isinstance(body, dict):
        aimed = {k: _aimed(v) if k == "requests" else v for k, v in body.items()}
        domain = aimed.get("domain")
        if isinstance(domain, str) and len(domain) <= MAX_TEXT:
            aimed["domain"] = "reimburse"
        return aimed
    if isinstance(body, list):
        return [_aimed(item) for item in body]
    return body


def _run(
    fuzzed: Fuzzed,
    operation: Any,
    mode: GenerationMode,
    check: Callable[..., None],
    *,
    rejected_change_nothing: bool = False,
    examples: int = EXAMPLES,
) -> int:
    seen = 0

    @settings(BOUNDED, max_examples=examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Any) -> None:
        nonlocal seen
        seen += 1
        case.body = _aimed(case.body)
        # The credentials go on the case itself (an assignment schemathesis tracks), not only
        # on the call: a case made "negative" by leaving Authorization out is valid once the
        # harness adds it, and the negative-data check must judge what was really sent.
        case.headers = {**(case.headers or {}), **fuzzed.auth}
        # requests leaves out a query parameter whose value is None, [None] or []: an "extra
        # parameter" made of one was never sent, so the case must not claim it was.
        case.query = {k: v for k, v in (case.query or {}).items() if _sent(v)}
        before = state(fuzzed.live) if rejected_change_nothing else None
        response = case.call(base_url=fuzzed.live.url, session=fuzzed.session, timeout=10)
        check(case, response)
        if before is not None and 400 <= response.status_code < 500:
            assert state(fuzzed.live) == before, (case.operation.label, response.text[:200])

    one()
    return seen


def test_rejected_input_changes_nothing(fuzzed: Fuzzed, caplog: pytest.LogCaptureFixture) -> None:
    """Requests the document calls invalid are refused (negative_data_rejection), each
    refusal leaves the audit chain, the policy version, users and clients as they were."""
    caplog.set_level(logging.INFO)
    statuses: dict[str, set[int]] = {}

    def check(case: Any, response: requests.Response) -> None:
        statuses.setdefault(case.operation.label, set()).add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
        if response.status_code not in LIMITS:
            case.validate_response(response, checks=[negative_data_rejection])

    ran = 0
    for operation in fuzzed.operations():
        nothing_to_send = operation.method.upper() == "GET" and not operation.query
        if operation.path in OPEN_PATHS or nothing_to_send:
            continue  # nothing to get wrong: no parameters, no body
        ran += _run(fuzzed, operation, GenerationMode.NEGATIVE, check, rejected_change_nothing=True)
    assert ran >= 3 * EXAMPLES
    # Most of what was sent was refused, and each operation refused something.
    assert all(any(400 <= code < 500 for code in codes) for codes in statuses.values())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_valid_input_gets_a_documented_answer(
    fuzzed: Fuzzed, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]

    def check(case: Any, response: requests.Response) -> None:
        case.validate_response(response, checks=checks)

    for operation in fuzzed.operations():
        _run(fuzzed, operation, GenerationMode.POSITIVE, check, examples=EXAMPLES // 3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _sent(value: Any) -> bool:
    if isinstance(value, list):
        return any(item is not None for item in value)
    return value is not None


CREDENTIALS = ("", "Bearer", "Bearer not-a-token", "Bearer a.b.c", "Basic YTpi")


def test_no_token_no_answer(fuzzed: Fuzzed) -> None:
    """Every protected operation answers 401 invalid_token before it reads anything."""
    before = state(fuzzed.live)
    sent = 0
    for operation in fuzzed.operations():
        if operation.path in OPEN_PATHS:
            continue

        @settings(BOUNDED, max_examples=2 * len(CREDENTIALS))
        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def one(case: Any) -> None:
            nonlocal sent
            credential = CREDENTIALS[sent % len(CREDENTIALS)]
            sent += 1
            case.headers = {k: v for k, v in (case.headers or {}).items() if k != "Authorization"}
            headers = {"Authorization": credential} if credential else {}
            response = case.call(
                base_url=fuzzed.live.url, session=fuzzed.session, headers=headers, timeout=10
            )
            assert response.status_code == 401, (case.operation.label, response.text[:200])
            assert response.json()["error"] == "invalid_token"
            (challenge,) = response.headers["www-authenticate"]
            assert challenge.startswith('Bearer realm="idhub"')
            case.validate_response(response, checks=[status_code_conformance])

        one()
    assert state(fuzzed.live) == before
