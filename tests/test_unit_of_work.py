"""`SqlUnitOfWork.nested` (adapters/unit_of_work.py): a part of an open unit of work that rolls
back alone, with the events and after-commit callbacks queued inside it, on SQLite and
PostgreSQL. The token endpoint's batches run each grant's write section in one
(oidc/grant_batch.py)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any

import pytest
from sqlalchemy import select

from idhub.adapters.db import audit_events, revoked_tokens
from idhub.adapters.unit_of_work import open_unit
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


def test_a_unit_whose_commit_fails_leaves_nothing_behind(
    make_settings: Any, make_services: Any, sqlite_db_url: str
) -> None:
    """A COMMIT that fails (here a foreign key SQLite checks only at COMMIT; a full disk is the
    same) leaves SQLite's transaction open on its connection. Given back to the pool like that
    (SQLAlchemy's pool skips its rollback when the transaction was ended through the
    `Connection`), the connection kept the write lock, and the next unit on it inherited the
    failed unit's writes: here it failed as well; had the cause passed (space freed on a full
    disk) it would have committed them with its own. Now nothing of the failed unit remains,
    nothing of it is counted (the audit observers hear of a unit's events only after its
    COMMIT), and the next unit commits just its own."""
    services = make_services(make_settings(sqlite_db_url))
    seen: list[str] = []
    services.audit_log.observers.append(lambda batch: seen.extend(e[0] for e in batch))
    uow = services.unit_of_work
    with pytest.raises(StorageError), uow.atomic() as tx:
        unit = open_unit(services.engine)
        assert unit is not None
        unit.conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
        unit.conn.exec_driver_sql(
            "INSERT INTO departments (id, name, path, parent_id, source, created_at, updated_at)"
            " VALUES (9001, 'x', '/x', 424242, 'local', 0, 0)"
        )
        _revoke(services, "failed", tx)
    assert seen == []
    with uow.atomic() as tx:
        _revoke(services, "kept", tx)
    assert seen == ["token.revoked"]
    # Read from the file by a connection of its own, outside the pool.
    with contextlib.closing(sqlite3.connect(sqlite_db_url.split("///", 1)[1])) as raw:
        assert raw.execute("SELECT count(*) FROM departments WHERE id = 9001").fetchone() == (0,)
        assert raw.execute("SELECT jti FROM revoked_tokens").fetchall() == [("kept",)]
        assert raw.execute("SELECT target FROM audit_events").fetchall() == [("kept",)]
    assert services.audit_log.verify().ok
