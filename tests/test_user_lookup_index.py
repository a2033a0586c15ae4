"""The upstream sign-in's account lookup (`users_matching`) reads through an index on both
databases instead of scanning every user: the plan of the very statement the store runs is
checked, so a change to the query's expression or a lost index fails here."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, event, text

from idhub.adapters.database import create_db_engine
from idhub.adapters.identity_store import SqlIdentityStore
from idhub.config import DatabaseSettings
from idhub.core.clock import SystemClock

FOLDED_INDEXES = {
    "username": "ix_users_username_folded",
    "email": "ix_users_email_folded",
    "employee_id": "ix_users_employee_id_folded",
}


def _captured_lookup(engine: Engine, store: SqlIdentityStore, attribute: str, value: str) -> Any:
    """The SQL and parameters `users_matching` sent, and its answer."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_rest: Any) -> None:
        seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        found = store.users_matching(attribute, value, limit=5)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    (statement, params), *_ = [s for s in seen if "FROM users" in s[0]]
    return statement, params, found


@pytest.mark.parametrize("attribute", sorted(FOLDED_INDEXES))
def test_users_matching_reads_through_its_index(db_url: str, attribute: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=db_url))
    store = SqlIdentityStore(engine, SystemClock())
    for n in range(40):
        store.create_user(
            username=f"user{n:03d}",
            email=f"User{n:03d}@Example.com",
            employee_id=f"E{n:05d}",
        )
    value = {"username": " USER007 ", "email": "user007@example.COM", "employee_id": "e00007"}
    statement, params, found = _captured_lookup(engine, store, attribute, value[attribute])
    assert [u.username for u in found] == ["user007"]

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1])
                for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
            )
        else:
            # With 40 rows a sequential scan is cheapest; forbid it so the plan shows whether
            # an index can answer the expression at all.
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(
                str(row[0]) for row in conn.exec_driver_sql("EXPLAIN " + statement, params)
            )
    assert FOLDED_INDEXES[attribute] in plan, plan
    engine.dispose()
