"""`SqlUnitOfWork.nested` (adapters/unit_of_work.py): a part of an open unit of work that rolls
back alone, with the events and after-commit callbacks queued inside it, on SQLite and
PostgreSQL. The token endpoint's batches run each grant's write section in one
(oidc/grant_batch.py)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, revoked_tokens
from idhub.bootstrap import Services
from idhub.core.audit import Actor, EventType
from idhub.core.transactions import Transaction
from idhub.errors import StorageError


def _revoke(services: Services, jti: str, tx: Transaction) -> None:
    now = time.time()
    services.token_store.revoke_jti(jti, expires_at=now + 60, now=now)
    tx.record(EventType.TOKEN_REVOKED, actor=Actor("client", "uow"), target=jti)


def test_a_nested_part_that_raises_rolls_back_alone_with_its_events(services: Services) -> None:
    uow = services.unit_of_work
    after: list[str] = []
    with uow.atomic() as tx:
        _revoke(services, "kept-1", tx)
        with pytest.raises(RuntimeError), uow.nested():
            _revoke(services, "dropped", tx)
            tx.after_commit(lambda: after.append("dropped"))
            raise RuntimeError("this part fails")
        with uow.nested():
            _revoke(services, "kept-2", tx)
            tx.after_commit(lambda: after.append("kept-2"))
    with services.engine.connect() as conn:
        jtis = set(conn.execute(select(revoked_tokens.c.jti)).scalars())
        targets = set(
            conn.execute(
                select(audit_events.c.target).where(audit_events.c.event_type == "token.revoked")
            ).scalars()
        )
    assert jtis == {"kept-1", "kept-2"}
    assert targets == {"kept-1", "kept-2"}
    assert after == ["kept-2"]
    report = services.audit_log.verify()
    assert report.ok, report.problem


def test_nested_needs_an_open_unit(services: Services) -> None:
    with pytest.raises(StorageError), services.unit_of_work.nested():
        pass
