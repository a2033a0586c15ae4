"""Reimbursement's own database: budget reservations OA made, expense reports against them,
and the accounting-archive records paying a report produces.

Owners and departments are stored in idhub's canonical spelling, so the data-scope condition
idhub returns (`DataScope.sql_where`) selects exactly the rows its `check` would allow.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from examples.shared.database import Database
from idhub.sdk import DataScope
from idhub.sdk.identifiers import canonical_name, canonical_path

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    oa_request_id INTEGER NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    owner TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    dept TEXT NOT NULL COLLATE NOCASE,
    amount_fen INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'reserved',    -- reserved | written_off
    written_off_fen INTEGER,
    reserved_by TEXT NOT NULL,                  -- the approver, on whose behalf OA called
    via TEXT NOT NULL,                          -- the system that called (the token's act)
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    reservation_id INTEGER NOT NULL UNIQUE REFERENCES reservations (id),
    owner TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    dept TEXT NOT NULL COLLATE NOCASE,
    title TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'submitted',   -- submitted | approved | paid
    approved_by TEXT,
    paid_by TEXT,
    created_at REAL NOT NULL
);
-- NOCASE like LIKE itself, so `dept LIKE '/a/%'` (a department and below) is an index range;
-- stored paths are canonical (case folded) either way.
CREATE INDEX IF NOT EXISTS reports_owner ON reports (owner);
CREATE INDEX IF NOT EXISTS reports_dept ON reports (dept);
CREATE TABLE IF NOT EXISTS archive_records (
    id INTEGER PRIMARY KEY,
    report_id INTEGER NOT NULL UNIQUE REFERENCES reports (id),
    voucher_no TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    dept TEXT NOT NULL COLLATE NOCASE,
    title TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    paid_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
PAGE = 100
# Lists count at most this many matches ("1000+"): an exact count of a large scope costs a walk
# over all of it, and nobody pages that far.
COUNT_CAP = 1000


class Conflict(Exception):
    """The record is not in a state that allows this; `str()` says why."""


@dataclass(frozen=True)
class Page:
    rows: list[sqlite3.Row]
    total: int  # at most COUNT_CAP
    more: bool = False  # more than `total` match


class Reimbursements:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ------------------------------------------------------------------ reservations

    def reserve(self, request: dict[str, Any], *, reserved_by: str, via: str) -> int:
        """The reservation for an OA request (the same one again if OA retries)."""
        with self._db.connect() as conn:
            found = conn.execute(
                "SELECT id FROM reservations WHERE oa_request_id = ?", (request["oa_request_id"],)
            ).fetchone()
            if found is not None:
                return int(found["id"])
            cursor = conn.execute(
                "INSERT INTO reservations (oa_request_id, kind, title, owner, owner_name, dept, "
                "amount_fen, reserved_by, via, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request["oa_request_id"],
                    request["kind"],
                    request["title"],
                    canonical_name(request["owner"]),
                    request["owner_name"],
                    canonical_path(request["dept"]),
                    request["amount_fen"],
                    reserved_by,
                    via,
                    time.time(),
                ),
            )
            return int(cursor.lastrowid or 0)

    def open_reservations(self, owner: str) -> list[sqlite3.Row]:
        """`owner`'s reservations no report uses yet: what a new report can be filed against."""
        with self._db.connect() as conn:
            return conn.execute(
                "SELECT r.* FROM reservations r LEFT JOIN reports p ON p.reservation_id = r.id "
                "WHERE r.owner = ? AND r.status = 'reserved' AND p.id IS NULL ORDER BY r.id",
                (canonical_name(owner),),
            ).fetchall()

    def reservation(self, reservation_id: int) -> sqlite3.Row | None:
        with self._db.connect() as conn:
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM reservations WHERE id = ?", (reservation_id,)
            ).fetchone()
            return row

    # ------------------------------------------------------------------ reports

    def file_report(self, reservation: sqlite3.Row, *, title: str, amount_fen: int) -> int:
        if amount_fen > reservation["amount_fen"]:
            raise Conflict("报销金额超过预占预算 the report exceeds the reserved budget")
        with self._db.connect() as conn:
            try:
                cursor = conn.execute(
                    "INSERT INTO reports (reservation_id, owner, owner_name, dept, title, "
                    "amount_fen, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        reservation["id"],
                        reservation["owner"],
                        reservation["owner_name"],
                        reservation["dept"],
                        title,
                        amount_fen,
                        time.time(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict("这笔预算已有报销单 a report already uses this budget") from None
            return int(cursor.lastrowid or 0)

    def report(self, report_id: int) -> sqlite3.Row | None:
        with self._db.connect() as conn:
            row: sqlite3.Row | None = conn.execute(
                "SELECT * FROM reports WHERE id = ?", (report_id,)
            ).fetchone()
            return row

    def visible(self, scope: DataScope, *, limit: int = PAGE, offset: int = 0) -> Page:
        """The reports the person's `scope` lets them read, newest first, one page of them."""
        where, params = scope.sql_where(owner_column="owner", dept_column="dept")
        with self._db.connect() as conn:
            total = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM reports WHERE {where} LIMIT :cap)",  # noqa: S608
                {**params, "cap": COUNT_CAP + 1},
            ).fetchone()[0]
            # Few matches: the indexes find them and sorting them is cheap. Many: they are
            # dense, so walking the table newest first fills a page after a few hundred rows,
            # where sorting every match would cost tens of milliseconds (bench/bench_examples.py).
            source = "reports" if total <= COUNT_CAP else "reports NOT INDEXED"
            rows = conn.execute(
                f"SELECT * FROM {source} WHERE {where} ORDER BY id DESC "  # noqa: S608
                "LIMIT :limit OFFSET :offset",
                {**params, "limit": limit, "offset": offset},
            ).fetchall()
        return Page(rows=rows, total=min(total, COUNT_CAP), more=total > COUNT_CAP)

    def approve(self, report_id: int, *, approver: str) -> None:
        with self._db.connect() as conn:
            cursor = conn.execute(
                "UPDATE reports SET status = 'approved', approved_by = ? "
                "WHERE id = ? AND status = 'submitted'",
                (approver, report_id),
            )
            if cursor.rowcount != 1:
                raise Conflict("只能审批待审批的报销单 only a submitted report can be approved")

    def pay(self, report_id: int, *, payer: str) -> str:
        """Pays an approved report in one transaction: writes off (核销) its reservation and
        files the accounting-archive record (会计档案). Returns the voucher number."""
        with self._db.connect() as conn:
            report = conn.execute(
                "SELECT * FROM reports WHERE id = ? AND status = 'approved'", (report_id,)
            ).fetchone()
            if report is None:
                raise Conflict("只能支付已审批的报销单 only an approved report can be paid")
            conn.execute(
                "UPDATE reports SET status = 'paid', paid_by = ? WHERE id = ?", (payer, report_id)
            )
            conn.execute(
                "UPDATE reservations SET status = 'written_off', written_off_fen = ? "
                "WHERE id = ? AND status = 'reserved'",
                (report["amount_fen"], report["reservation_id"]),
            )
            voucher = f"V{time.strftime('%Y%m')}-{report_id:06d}"
            conn.execute(
                "INSERT INTO archive_records (report_id, voucher_no, owner, dept, title, "
                "amount_fen, paid_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    report_id,
                    voucher,
                    report["owner"],
                    report["dept"],
                    report["title"],
                    report["amount_fen"],
                    payer,
                    time.time(),
                ),
            )
            return voucher

    def archive(self) -> list[sqlite3.Row]:
        with self._db.connect() as conn:
            return conn.execute("SELECT * FROM archive_records ORDER BY id DESC").fetchall()
