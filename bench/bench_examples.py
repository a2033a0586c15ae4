"""The example reimbursement system's list at size: 100,000 expense reports in its SQLite
database, filtered by the data scope idhub returns, for each kind of person.

Measures `examples.reimburse.store.Reimbursements.visible` (a count capped at 1,000 and the
first page of 100 rows, newest first, with the `WHERE` clause `DataScope.sql_where` builds) for
an employee (own), a department manager (their region and below, ~1/8 of the rows), and
finance / the auditor (all), in the same run as
  peer   the same two queries with the condition written by hand (plain sqlite3), and
  naive  the SDK's filter with an exact count and the page sorted from the index (what the
         store did first; why it counts to 1,000 and walks the table for large scopes).
Goal: <= 50 ms per list.

Usage: python bench/bench_examples.py [--reports N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from examples.reimburse.store import SCHEMA, Reimbursements  # noqa: E402
from examples.shared.database import Database  # noqa: E402

from idhub.sdk.pdp import DataScope, DepartmentScope  # noqa: E402

REGIONS = ("华东区", "华南区", "华北区", "西南区", "西北区", "东北区", "华中区", "海外部")
TEAMS = ("销售一部", "销售二部", "渠道部", "客服部")
GOAL_MS = 50.0


def departments() -> list[str]:
    paths = []
    for region in REGIONS:
        paths.append(f"/总部/{region}")
        for team in TEAMS:
            paths.append(f"/总部/{region}/{team}")
            paths += [f"/总部/{region}/{team}/{i}组" for i in range(1, 4)]
    return paths


def build(path: Path, reports: int) -> None:
    rng = random.Random(7)
    db = Database(path, SCHEMA)
    depts = departments()
    people = [(f"u{n:06d}", rng.choice(depts)) for n in range(reports // 20)]
    now = time.time()
    reservations = []
    rows = []
    for i in range(1, reports + 1):
        owner, dept = people[rng.randrange(len(people))]
        amount = rng.randrange(1_000, 500_000)
        reservations.append(
            (i, i, "travel_request", "出差", owner, owner, dept, amount, "m", "oa", now)
        )
        status = rng.choice(("submitted", "approved", "paid"))
        rows.append((i, i, owner, owner, dept, "差旅费", amount, status, now))
    with db.connect() as conn:
        conn.executemany(
            "INSERT INTO reservations (id, oa_request_id, kind, title, owner, owner_name, dept, "
            "amount_fen, reserved_by, via, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            reservations,
        )
        conn.executemany(
            "INSERT INTO reports (id, reservation_id, owner, owner_name, dept, title, amount_fen, "
            "status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("ANALYZE")


def scopes() -> dict[str, DataScope]:
    """What idhub's /api/v1/authz/scopes answers for each kind of person (policies/)."""
    region = DepartmentScope("/总部/华东区", subtree=True)
    return {
        "employee (self)": DataScope(all=False, self=True, departments=(), user="u000042"),
        "manager (dept_tree)": DataScope(
            all=False, self=True, departments=(region,), user="u000007"
        ),
        "finance / auditor (all)": DataScope(all=True, self=False, departments=(), user="c"),
    }


HAND_WRITTEN = {
    "employee (self)": ("owner = ?", ["u000042"]),
    "manager (dept_tree)": (
        "(owner = ? OR dept = ? OR dept LIKE ?)",
        ["u000007", "/总部/华东区", "/总部/华东区/%"],
    ),
    "finance / auditor (all)": ("1=1", []),
}


def peer(conn: sqlite3.Connection, name: str) -> Callable[[], int]:
    """The store's two queries with the condition written inline by hand."""
    where, params = HAND_WRITTEN[name]

    def run() -> int:
        count = f"SELECT count(*) FROM (SELECT 1 FROM reports WHERE {where} LIMIT 1001)"  # noqa: S608
        total = conn.execute(count, params).fetchone()[0]
        source = "reports" if total <= 1000 else "reports NOT INDEXED"
        sql = f"SELECT * FROM {source} WHERE {where} ORDER BY id DESC LIMIT 100"  # noqa: S608
        return len(conn.execute(sql, params).fetchall())

    return run


def naive(conn: sqlite3.Connection, scope: DataScope) -> Callable[[], int]:
    where, params = scope.sql_where(owner_column="owner", dept_column="dept")

    def run() -> int:
        conn.execute(f"SELECT count(*) FROM reports WHERE {where}", params).fetchone()  # noqa: S608
        sql = f"SELECT * FROM reports WHERE {where} ORDER BY id DESC LIMIT 100"  # noqa: S608
        return len(conn.execute(sql, params).fetchall())

    return run


def timed(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm the page cache
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idhub-bench-examples-") as work:
        path = Path(work) / "reimburse.db"
        started = time.perf_counter()
        build(path, args.reports)
        print(f"{args.reports:,} reports built in {time.perf_counter() - started:.1f} s")
        store = Reimbursements(Database(path, SCHEMA))
        connection = sqlite3.connect(path)
        print(f"{'list':24} {'rows':>7} {'example':>9} {'peer':>8} {'ratio':>5} {'naive':>8}")
        worst = 0.0
        for name, scope in scopes().items():
            where, params = scope.sql_where(owner_column="owner", dept_column="dept")
            sql = f"SELECT count(*) FROM reports WHERE {where}"  # noqa: S608
            rows = connection.execute(sql, params).fetchone()[0]
            ours = timed(lambda scope=scope: store.visible(scope), args.runs)
            theirs = timed(peer(connection, name), args.runs)
            slow = timed(naive(connection, scope), args.runs)
            worst = max(worst, ours)
            line = f"{name:24} {rows:>7,} {ours:>6.1f} ms {theirs:>5.1f} ms {ours / theirs:>5.2f}"
            print(f"{line} {slow:>5.1f} ms")
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"median of {args.runs} runs each; load average {load}")
        verdict = "meets" if worst <= GOAL_MS else "MISSES"
        print(f"slowest list {worst:.1f} ms: {verdict} the {GOAL_MS:.0f} ms goal")
        connection.close()
    return 0 if worst <= GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
