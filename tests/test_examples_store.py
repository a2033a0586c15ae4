"""The reimbursement example's list query on a real SQLite file: whichever way it reads a large
scope (indexes, or the table newest first), the page is the newest rows the data-scope filter
selects, the count stops at 1,000 and says so."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from examples.reimburse.store import COUNT_CAP, PAGE, SCHEMA, Reimbursements
from examples.shared.database import Database

from idhub.sdk.pdp import DataScope, DepartmentScope

DEPTS = ("/总部/华东区", "/总部/华东区/销售一部", "/总部/华东区/销售一部/渠道组", "/总部/华南区")


@pytest.fixture
def store(tmp_path: Path) -> Reimbursements:
    """2,500 reports over a few departments, written in one transaction."""
    rng = random.Random(3)
    db = Database(tmp_path / "reimburse.db", SCHEMA)
    people = [(f"u{rng.randrange(60):03d}", rng.choice(DEPTS)) for _ in range(2_500)]
    with db.connect() as conn:
        conn.executemany(
            "INSERT INTO reservations (id, oa_request_id, kind, title, owner, owner_name, dept, "
            "amount_fen, reserved_by, via, created_at) VALUES (?, ?, 'travel_request', 't', ?, ?, "
            "?, 100, 'm', 'oa', 0)",
            [(i, i, o, o, d) for i, (o, d) in enumerate(people, 1)],
        )
        conn.executemany(
            "INSERT INTO reports (id, reservation_id, owner, owner_name, dept, title, amount_fen, "
            "created_at) VALUES (?, ?, ?, ?, ?, 't', 100, 0)",
            [(i, i, o, o, d) for i, (o, d) in enumerate(people, 1)],
        )
    return Reimbursements(db)


TREE = (DepartmentScope("/总部/华东区/销售一部", subtree=True),)
ONE = (DepartmentScope("/总部/华东区", subtree=False),)


@pytest.mark.parametrize(
    "scope",
    [
        DataScope(all=False, self=True, departments=(), user="u007"),
        DataScope(all=False, self=True, departments=TREE, user="u007"),
        DataScope(all=False, self=False, departments=ONE, user="x"),
        DataScope(all=True, self=False, departments=(), user="x"),
    ],
    ids=["self", "dept_tree", "dept", "all"],
)  # fmt: skip
def test_the_page_is_the_newest_rows_the_filter_selects(
    store: Reimbursements, scope: DataScope
) -> None:
    where, params = scope.sql_where(owner_column="owner", dept_column="dept")
    with store._db.connect() as conn:
        selected = [
            r["id"]
            for r in conn.execute(
                f"SELECT id FROM reports WHERE {where} ORDER BY id DESC",  # noqa: S608
                params,
            )
        ]
    page = store.visible(scope)
    assert [r["id"] for r in page.rows] == selected[:PAGE]
    assert page.total == min(len(selected), COUNT_CAP)
    assert page.more == (len(selected) > COUNT_CAP)
    second = store.visible(scope, offset=PAGE)
    assert [r["id"] for r in second.rows] == selected[PAGE : 2 * PAGE]
