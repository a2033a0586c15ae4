"""The hash chain: appends link up, and `verify` names the first broken link when the
database is edited behind idhub's back (edited field, deleted, inserted, reordered event).
Every test runs on SQLite and PostgreSQL and tampers with plain SQL."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text

from idhub.bootstrap import Services
from idhub.core.audit import (
    Actor,
    AuditEvent,
    EventType,
    PendingEvent,
    RequestContext,
    scrub_details,
)
from idhub.core.audit_chain import (
    GENESIS_HASH,
    ChainVerifier,
    canonical_bytes,
    canonical_details,
    canonical_tail,
    chain_hash,
)
from idhub.core.clock import FrozenClock
from idhub.errors import AuditError


def _fill(services: Services, n: int = 10) -> None:
    for i in range(n):
        services.audit.record(
            EventType.LOGIN_SUCCEEDED if i % 2 else EventType.LOGIN_FAILED,
            actor=Actor("user", f"u{i}"),
            target=f"client:oa{i}",
            outcome="success" if i % 2 else "failure",
            details={"i": i, "reason": "bad_password", "名前": "张三"},
            ctx=RequestContext("127.0.0.1", "pytest", f"req{i:08d}"),
        )


def _sql(services: Services, statement: str, **params: Any) -> None:
    with services.engine.begin() as conn:
        conn.execute(text(statement), params)


def _row(services: Services, seq: int) -> dict[str, Any]:
    with services.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM audit_events WHERE seq = :s"), {"s": seq}).first()
    assert row is not None
    return dict(row._mapping)


def _rehash(row: dict[str, Any]) -> str:
    tail = canonical_tail(
        ts=row["ts"],
        event_type=row["event_type"],
        actor_type=row["actor_type"],
        actor_id=row["actor_id"],
        target=row["target"],
        outcome=row["outcome"],
        client_ip=row["client_ip"],
        user_agent=row["user_agent"],
        request_id=row["request_id"],
        details_json=row["details"],
    )
    return chain_hash(row["prev_hash"], canonical_bytes(row["seq"], tail))


def test_appends_form_one_chain_that_verifies(services: Services) -> None:
    _fill(services, 10)
    report = services.audit_log.verify()
    assert report.ok, report.problem
    assert (report.checked, report.first_seq, report.last_seq) == (10, 1, 10)
    first = _row(services, 1)
    assert first["prev_hash"] == GENESIS_HASH
    assert _row(services, 2)["prev_hash"] == first["hash"]
    assert report.head_hash == _row(services, 10)["hash"]
    # Stored details are the canonical text: verification hashes the stored bytes.
    assert first["details"] == canonical_details(json.loads(first["details"]))
    assert "张三" in first["details"]


def test_record_many_is_one_contiguous_segment(services: Services) -> None:
    services.audit.record(EventType.SYNC_RUN, actor=Actor.system("sync"))
    services.audit.record_many(
        [
            PendingEvent(EventType.SYNC_CHANGE, Actor.system("sync"), target=f"user:{i}")
            for i in range(50)
        ]
    )
    events = services.audit_log.search(limit=1000, newest_first=False)
    assert [e.seq for e in events] == list(range(1, 52))
    assert [e.target for e in events[1:]] == [f"user:{i}" for i in range(50)]
    assert services.audit_log.verify().ok


def test_empty_chain_verifies(services: Services) -> None:
    report = services.audit_log.verify()
    assert report.ok and report.checked == 0 and report.head_hash == GENESIS_HASH


def test_edited_field_is_detected(services: Services) -> None:
    _fill(services)
    _sql(services, "UPDATE audit_events SET outcome = 'denied' WHERE seq = 4")
    problem = services.audit_log.verify().problem
    assert problem is not None and problem.seq == 4 and problem.kind == "altered"


def test_edited_details_is_detected(services: Services) -> None:
    _fill(services)
    edited = _row(services, 7)["details"].replace("bad_password", "unknown_user")
    _sql(services, "UPDATE audit_events SET details = :d WHERE seq = 7", d=edited)
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (7, "altered")


def test_edit_with_recomputed_hash_breaks_the_next_link(services: Services) -> None:
    _fill(services)
    row = _row(services, 5)
    row["actor_id"] = "someone-else"
    _sql(
        services,
        "UPDATE audit_events SET actor_id = :a, hash = :h WHERE seq = 5",
        a=row["actor_id"],
        h=_rehash(row),
    )
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (6, "unlinked")


def test_deleted_event_is_detected(services: Services) -> None:
    _fill(services)
    _sql(services, "DELETE FROM audit_events WHERE seq = 6")
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (7, "missing")
    assert "6" in problem.message


def test_deleted_first_event_is_detected(services: Services) -> None:
    _fill(services)
    _sql(services, "DELETE FROM audit_events WHERE seq = 1")
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (2, "missing")


def test_deleted_and_renumbered_event_is_detected(services: Services) -> None:
    _fill(services)
    _sql(services, "DELETE FROM audit_events WHERE seq = 6")
    # Two steps so the primary key never collides on either backend.
    _sql(services, "UPDATE audit_events SET seq = seq + 1000 WHERE seq > 6")
    _sql(services, "UPDATE audit_events SET seq = seq - 1001 WHERE seq > 1000")
    problem = services.audit_log.verify().problem
    assert problem is not None and problem.seq == 6


def test_inserted_event_is_detected(services: Services) -> None:
    _fill(services)
    _sql(services, "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 5")
    _sql(services, "UPDATE audit_events SET seq = seq - 999 WHERE seq > 1000")
    # A forger who knows the format links the new event properly to event 4.
    prev = _row(services, 4)
    forged = AuditEvent(
        seq=5, ts=prev["ts"] + 1, event_type="user.password_set", actor_type="admin",
        actor_id="mallory", target="user:ceo", outcome="success", client_ip=None,
        user_agent=None, request_id=None, details={}, prev_hash=prev["hash"],
    )  # fmt: skip
    _sql(
        services,
        "INSERT INTO audit_events (seq, ts, event_type, actor_type, actor_id, target, outcome,"
        " details, prev_hash, hash) VALUES (5, :ts, :t, 'admin', 'mallory', 'user:ceo',"
        " 'success', '{}', :p, :h)",
        ts=forged.ts,
        t=forged.event_type,
        p=forged.prev_hash,
        h=forged.compute_hash(),
    )
    problem = services.audit_log.verify().problem
    assert problem is not None and problem.seq == 6
    assert problem.kind in {"altered", "unlinked"}


def test_inserted_event_without_renumbering_is_detected(services: Services) -> None:
    _fill(services)
    # Squeezed in above the head with a made-up hash.
    _sql(
        services,
        "INSERT INTO audit_events (seq, ts, event_type, actor_type, outcome, details, prev_hash,"
        " hash) VALUES (11, 1.0, 'user.created', 'admin', 'success', '{}', :p, :h)",
        p=_row(services, 10)["hash"],
        h="f" * 64,
    )
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (11, "altered")


def test_reordered_events_are_detected(services: Services) -> None:
    _fill(services)
    _sql(services, "UPDATE audit_events SET seq = 1003 WHERE seq = 3")
    _sql(services, "UPDATE audit_events SET seq = 3 WHERE seq = 4")
    _sql(services, "UPDATE audit_events SET seq = 4 WHERE seq = 1003")
    problem = services.audit_log.verify().problem
    assert problem is not None and problem.seq == 3


def test_reordered_with_swapped_contents_is_detected(services: Services) -> None:
    """Swapping two rows' contents but keeping seq, prev_hash and hash in place."""
    _fill(services)
    a, b = _row(services, 3), _row(services, 4)
    fields = ("ts", "event_type", "actor_id", "target", "outcome", "request_id", "details")
    for src, dst in ((a, 4), (b, 3)):
        sets = ", ".join(f"{f} = :{f}" for f in fields)
        _sql(
            services,
            f"UPDATE audit_events SET {sets} WHERE seq = :s",  # noqa: S608 - test constants
            s=dst,
            **{f: src[f] for f in fields},
        )
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (3, "altered")


def test_chain_continues_from_the_anchor(services: Services) -> None:
    _sql(
        services,
        "INSERT INTO audit_anchor (id, first_seq, prev_hash) VALUES (1, 101, :p)",
        p="a" * 64,
    )
    _fill(services, 3)
    assert [e.seq for e in services.audit_log.search(newest_first=False)] == [101, 102, 103]
    assert _row(services, 101)["prev_hash"] == "a" * 64
    assert services.audit_log.verify().ok
    _sql(services, "UPDATE audit_anchor SET prev_hash = :p", p="b" * 64)
    problem = services.audit_log.verify().problem
    assert problem is not None and (problem.seq, problem.kind) == (101, "unlinked")


def test_time_comes_from_the_clock_and_context_is_kept(
    make_settings: Any, make_services: Any, db_url: str
) -> None:
    clock = FrozenClock(1_800_000_000.25)
    services = make_services(make_settings(db_url), clock=clock)
    services.audit.record(
        EventType.TOKEN_ISSUED,
        actor=Actor("client", "oa"),
        target="oa",
        details={"grant_type": "client_credentials", "jti": "abc"},
        ctx=RequestContext("10.0.0.1", "curl/8" + "x" * 600, "rid12345"),
    )
    (event,) = services.audit_log.search()
    assert event.ts == 1_800_000_000.25
    assert (event.client_ip, event.request_id) == ("10.0.0.1", "rid12345")
    assert event.user_agent is not None and len(event.user_agent) == 500
    assert event.details == {"grant_type": "client_credentials", "jti": "abc"}
    assert event.compute_hash() == event.hash


def test_unknown_vocabulary_is_refused(services: Services) -> None:
    with pytest.raises(AuditError, match="unknown audit event type"):
        services.audit.record("login.maybe", actor=Actor("user", "u"))  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="outcome"):
        services.audit.record(EventType.LOGIN_FAILED, actor=Actor("user"), outcome="meh")  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="not JSON"):
        services.audit.record(
            EventType.LOGIN_FAILED, actor=Actor("user"), details={"x": float("nan")}
        )
    assert services.audit_log.count() == 0


@pytest.mark.parametrize("where", ["unmigrated sqlite", "unreachable postgresql"])
def test_write_failure_raises_audit_error(
    where: str, make_settings: Any, make_services: Any, tmp_path: Any
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'empty.db'}"
        if where.startswith("unmigrated")
        else "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    )
    services = make_services(make_settings(url))
    with pytest.raises(AuditError, match="could not be written"):
        services.audit.record(EventType.LOGIN_SUCCEEDED, actor=Actor("user", "u"))


def test_secret_shaped_details_are_redacted() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    cleaned = scrub_details(
        {"client_secret": "s3cr3t", "note": f"Bearer {jwt}", "nested": {"code": "abc"},
         "list": [jwt], "jti": "keep-me", "grant_type": "authorization_code"}
    )  # fmt: skip
    assert cleaned["client_secret"] == "[redacted]"
    assert cleaned["note"] == "[redacted]"
    assert cleaned["nested"] == {"code": "[redacted]"}
    assert cleaned["list"] == ["[redacted]"]
    assert cleaned["jti"] == "keep-me" and cleaned["grant_type"] == "authorization_code"
    assert cleaned["_redacted"] == ["client_secret", "list[0]", "nested.code", "note"]


def test_verifier_reads_rows_in_chunks() -> None:
    """The verifier keeps its place between chunks and stops at the first break."""
    rows, prev = [], GENESIS_HASH
    for seq in range(1, 7):
        event = AuditEvent(seq, 1.5 * seq, "sync.run", "system", "s", None, "success",
                           None, None, None, {"n": seq}, prev)  # fmt: skip
        digest = event.compute_hash()
        rows.append((seq, event.ts, event.event_type, "system", "s", None, "success", None,
                     None, None, canonical_details(event.details), prev, digest))  # fmt: skip
        prev = digest
    verifier = ChainVerifier()
    assert verifier.feed(rows[:3]) and verifier.feed(rows[3:])
    assert verifier.report().ok and verifier.report().head_hash == prev
    broken = list(rows)
    broken[4] = (*rows[4][:10], '{"n":99}', *rows[4][11:])
    verifier = ChainVerifier()
    assert verifier.feed(broken[:2])
    assert not verifier.feed(broken[2:])
    report = verifier.report()
    assert report.problem is not None and report.problem.seq == 5 and report.checked == 4


def test_record_in_commits_or_rolls_back_with_the_callers_change(services: Services) -> None:
    log = services.audit_log
    event = PendingEvent(EventType.USER_DISABLED, Actor("admin", "root"), target="user:7")
    with pytest.raises(RuntimeError), log.locked() as conn:
        log.record_in(conn, [event])
        raise RuntimeError("the caller's own change failed")
    assert log.count() == 0
    with services.engine.connect() as conn, conn.begin():
        log.record_in(conn, [event, event])  # takes the append lock itself
    services.audit.record(EventType.USER_ENABLED, actor=Actor("admin", "root"), target="user:7")
    assert [e.seq for e in log.search(newest_first=False)] == [1, 2, 3]
    assert log.verify().ok
