"""core/audit_chain.py `event_tail`: the canonical tail with the first five fields' text
remembered is `chain_tail`'s text for every kind of value, on a hit and a miss, and after the
memo was emptied at its bound; and the audit store's events (built with it) verify."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.db import metadata
from idhub.core import audit_chain
from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.audit_chain import canonical_tail, chain_tail, event_tail
from idhub.core.clock import FrozenClock

VALUES = [
    None, "", "client", 'q"uote\\back', "tab\tnew\nline\x01\x1f\x7f", "密码 ü", "\ud800", "é" * 3,
]  # fmt: skip


@pytest.mark.parametrize(("actor_id", "target"), list(itertools.product(VALUES, repeat=2)))
def test_the_tail_is_the_chain_tail(actor_id: str | None, target: str | None) -> None:
    for ts in (1_800_000_000.0, 1796407495.887529, 0.1 + 0.2, 5e-324):
        for ctx in (("127.0.0.1", "wrk", "req-1"), (None, None, None), ('"', "\\", "é")):
            head = ("token.issued", "client", actor_id, target, "success")
            expected = chain_tail(ts, (*head, *ctx), '{"a":1}')
            ip, agent, rid = ctx
            assert event_tail(ts, head, ip, agent, rid, '{"a":1}') == expected  # a miss
            assert event_tail(ts, head, ip, agent, rid, '{"a":1}') == expected  # a hit
            assert expected == canonical_tail(
                ts=ts, event_type=head[0], actor_type=head[1], actor_id=actor_id,
                target=target, outcome=head[4], client_ip=ctx[0], user_agent=ctx[1],
                request_id=ctx[2], details_json='{"a":1}',
            )  # fmt: skip


def test_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_chain, "_HEADS_KEPT", 8)
    monkeypatch.setattr(audit_chain, "_HEADS", {})
    for i in range(50):
        head = ("login.succeeded", "user", f"user-{i}", None, "success")
        text = event_tail(1.5, head, None, None, None, "{}")
        assert text == chain_tail(1.5, (*head, None, None, None), "{}")
        assert len(audit_chain._HEADS) <= 8


def test_the_store_remembers_heads_and_its_events_verify(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    metadata.create_all(engine)
    log = SqlAuditLog(engine, FrozenClock(1_800_000_000.25))
    audit_chain._HEADS.clear()
    ctx = RequestContext("10.0.0.1", 'ua "x"', "req")
    events = [
        PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "c-1"), "c-1", ctx=ctx,
                     details={"jti": str(i)})
        for i in range(5)
    ] + [PendingEvent(EventType.SYNC_CHANGE, Actor.system("sync"), "a\x00b")]  # fmt: skip
    log.record_many(events)
    assert ("token.issued", "client", "c-1", "c-1", "success") in audit_chain._HEADS
    # The NUL is shown as U+FFFD before the head is made: the remembered text is the stored one.
    assert ("sync.change", "system", "sync", "a\ufffdb", "success") in audit_chain._HEADS
    assert log.verify().ok
    engine.dispose()
