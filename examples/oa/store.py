"""OA's own database: travel and purchase requests. There is no table of managers: who may
approve a request is the decision API's answer (idhub's manager relation and policy)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from examples.shared.database import Database
from idhub.sdk import DataScope
from idhub.sdk.identifiers import canonical_name, canonical_path

KINDS = {"travel_request": "出差申请 travel", "purchase_request": "采购申请 purchase"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,            -- canonical username (idhub.sdk.identifiers)
    owner_name TEXT NOT NULL,
    dept TEXT NOT NULL,             -- canonical department path
    title TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'submitted',   -- submitted | approved
    approved_by TEXT,
    reservation_id INTEGER,         -- the budget reservation in reimbursement
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_owner ON requests (owner);
CREATE INDEX IF NOT EXISTS requests_dept ON requests (dept);
"""


class Requests:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self, *, kind: str, owner: str, owner_name: str, dept: str, title: str, amount_fen: int
    ) -> int:
        with self._db.connect() as conn:
            cursor = conn.execute(
                "INSERT INTO requests (kind, owner, owner_name, dept, title, amount_fen, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    canonical_name(owner),
                    owner_name,
                    canonical_path(dept),
                    title,
                    amount_fen,
                    time.time(),
                ),
            )
            return int(cursor.lastrowid or 0)

    def get(self, request_id: int) -> sqlite3.Row | None:
        with self._db.connect() as conn:
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM requests WHERE id = ?", (request_id,)
            ).fetchone()
            return row

    def visible(self, scopes: Mapping[str, DataScope]) -> list[sqlite3.Row]:
        """Every request of each kind that the kind's data scope (for one person) lets them read."""
        rows: list[sqlite3.Row] = []
        with self._db.connect() as conn:
            for kind, scope in scopes.items():
                where, params = scope.sql_where(owner_column="owner", dept_column="dept")
                params_all: dict[str, Any] = {**params, "kind": kind}
                rows += conn.execute(
                    f"SELECT * FROM requests WHERE kind = :kind AND {where}",  # noqa: S608
                    params_all,
                ).fetchall()
        return sorted(rows, key=lambda r: -r["id"])

    def approve(self, request_id: int, *, approver: str, reservation_id: int) -> bool:
        with self._db.connect() as conn:
            cursor = conn.execute(
                "UPDATE requests SET status = 'approved', approved_by = ?, reservation_id = ? "
                "WHERE id = ? AND status = 'submitted'",
                (approver, reservation_id, request_id),
            )
            return cursor.rowcount == 1
