"""Events written before the append was made cheaper (2026-12-01, second session) still
verify, and the append still writes exactly what it wrote then.

`audit_chain_v1.json` holds the rows the earlier code stored for the events `_record_all`
records (same clock, same inputs): secrets to scrub, nested and non-ASCII details, values
JSON only knows through `default=str`, over-long fields that are clipped, a `record_many`
batch. Loading those rows and verifying them shows the old chain is still accepted;
recording the same events now and comparing row by row shows the canonical form, the
scrubbing and the clipping did not move by a byte, so old and new events share one verifier.
Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text

from idhub.adapters.audit_query import COLUMNS
from idhub.adapters.audit_store import SqlAuditLog
from idhub.bootstrap import Services
from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.clock import FrozenClock

FIXTURE = Path(__file__).with_name("audit_chain_v1.json")
_JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"


def _record_all(log: SqlAuditLog, clock: FrozenClock) -> None:
    ctx = RequestContext("203.0.113.7", 'Mozilla/5.0 (X11) "quoted" \\ back', "req-0001")
    log.record(
        EventType.TOKEN_ISSUED,
        actor=Actor("client", "bench-cc"),
        target="bench-cc",
        details={"grant_type": "client_credentials", "client_id": "bench-cc",
                 "audience": "reimburse", "scope": "authz", "jti": "j-1"},
        ctx=ctx,
    )  # fmt: skip
    clock.advance(0.001234567)
    log.record(
        EventType.LOGIN_FAILED,
        actor=Actor("user", "张三 \U0001f600"),
        outcome="failure",
        details={"reason": "bad_password", "名前": "张三", "nested": {"b": [1, 2.5, None],
                 "a": {"z": True, "y": False}}, "tab\tkey": "line\nbreak\u0001"},
        ctx=RequestContext("::1", None, None),
    )  # fmt: skip
    clock.advance(0.5)
    log.record(
        EventType.CLIENT_SECRET_ROTATED,
        actor=Actor("admin", "root"),
        target="client:oa",
        details={"password": "hunter2", "Client_Secret": "s3cret", "token": "",
                 "code": None, "nested": {"refresh_token": "rt", "ok": "fine",
                 "list": ["plain", _JWT, {"assertion": "x"}]}, "note": f"Bearer {_JWT}",
                 "already": {"secret": "[redacted]"}, "TOKEN": 12345, "Secret_Key": False,
                 "key": "-----BEGIN EC PRIVATE KEY-----\nMHc...", "pem": "-----BEGIN CERT"},
        ctx=ctx,
    )  # fmt: skip
    clock.advance(1.0 / 3.0)
    log.record(
        EventType.SYNC_RUN,
        actor=Actor.system("sync"),
        details={"when": datetime.datetime(2026, 12, 1, 17, 0, tzinfo=datetime.UTC),
                 "amount": Decimal("1.10"), "pair": (1, "two"), "ints": {7: "seven", 3: "three"},
                 "big": 10**20, "neg": -0.0, "e": 1e-7},
    )  # fmt: skip
    clock.advance(2.0)
    log.record(
        EventType.LOGIN_SUCCEEDED,
        actor=Actor("user", "u" * 400),
        target="t" * 600,
        details={},
        ctx=RequestContext("1" * 80, "a" * 700, "r" * 90),
    )
    clock.advance(0.25)
    batch = [
        PendingEvent(EventType.SYNC_CHANGE, Actor.system("sync"), f"user:{i}",
                     details={"field": "department", "before": "/a", "after": f"/b/{i}"})
        for i in range(3)
    ]  # fmt: skip
    log.record_many(batch)
    clock.advance(0.000001)
    log.record(EventType.AUDIT_ARCHIVED, actor=Actor.system(), details={"empty": {}, "l": []})


def _rows(services: Services) -> list[list[Any]]:
    cols = ", ".join(COLUMNS)
    with services.engine.connect() as conn:
        found = conn.execute(text(f"SELECT {cols} FROM audit_events ORDER BY seq"))  # noqa: S608
        return [list(row) for row in found]


def _fixture_rows() -> list[list[Any]]:
    rows: list[list[Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))["rows"]
    return rows


def write_fixture(services: Services) -> None:
    """How the fixture was made (with the code before the change): an empty database."""
    clock = FrozenClock(1_800_000_000.123456)
    _record_all(SqlAuditLog(services.engine, clock), clock)
    FIXTURE.write_text(
        json.dumps({"canonical_version": 1, "rows": _rows(services)}, ensure_ascii=False, indent=1)
        + "\n",
        encoding="utf-8",
    )


def _load(services: Services, rows: list[list[Any]]) -> None:
    names = list(COLUMNS)
    marks = ", ".join(f":{n}" for n in names)
    with services.engine.begin() as conn:
        conn.execute(
            text(f"INSERT INTO audit_events ({', '.join(names)}) VALUES ({marks})"),  # noqa: S608
            [dict(zip(names, row, strict=True)) for row in rows],
        )


def test_events_written_before_the_change_verify(services: Services) -> None:
    old = _fixture_rows()
    _load(services, old)
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert (report.checked, report.last_seq) == (len(old), old[-1][0])
    assert report.head_hash == old[-1][-1]


def test_new_events_continue_an_old_chain_and_verify(services: Services) -> None:
    old = _fixture_rows()
    _load(services, old)
    clock = FrozenClock(1_900_000_000.0)
    _record_all(SqlAuditLog(services.engine, clock), clock)
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert report.checked == 2 * len(old)
    assert _rows(services)[len(old)][-2] == old[-1][-1]  # the first new event links to the old head


def test_the_same_events_are_stored_byte_for_byte_as_before(services: Services) -> None:
    clock = FrozenClock(1_800_000_000.123456)
    _record_all(SqlAuditLog(services.engine, clock), clock)
    assert _rows(services) == _fixture_rows()


def test_recording_leaves_the_callers_details_as_they_were(services: Services) -> None:
    details = {"password": "hunter2", "nested": {"token": "t", "list": [_JWT]}, "ok": 1}
    before = json.dumps(details, sort_keys=True)
    services.audit.record(EventType.USER_PASSWORD_SET, actor=Actor("admin", "a"), details=details)
    assert json.dumps(details, sort_keys=True) == before
    assert services.audit_log.verify().ok
