"""One identity per person: what linking costs a sync. A DingTalk-shaped org (the local fake,
tests/dingtalk_fake.py, on 127.0.0.1) is synced three ways, as medians of --runs:

- into an empty SQLite database (every member created: the no-linking baseline),
- into a database that already holds every member as a local account with the same employee
  number (every member linked by key: the bulk candidate index, one link per person),
- again into that linked database with nothing changed (precedence over two links each).

A bare httpx read of the same API calls is the floor measured in the same run. Bounded by
--max-seconds.

    python bench/bench_linking.py [--users 10000] [--departments 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench.bench_dingtalk_sync import bare_read, services_for  # noqa: E402
from tests.dingtalk_fake import DingTalkFake, company  # noqa: E402


def seed_local_people(services: Any, users: int) -> None:
    """Every member as an admin-made account, employee number as DingTalk's job_number."""
    from sqlalchemy import insert

    from idhub.adapters.db import users as table

    now = time.time()
    rows = [
        {
            "sub": secrets.token_hex(16),
            "username": f"local{n:06d}",
            "display_name": "",
            "employee_id": f"E{n:06d}",
            "source": "local",
            "disabled": False,
            "failed_logins": 0,
            "attributes": {},
            "created_at": now,
            "updated_at": now,
        }
        for n in range(users)
    ]
    with services.engine.begin() as conn:
        conn.execute(insert(table), rows)


def timed_sync(services: Any) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    report = services.oa_sync("dingtalk:bench").run()
    return time.perf_counter() - started, report.counts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--departments", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    fake = DingTalkFake(company(users=args.users, departments=args.departments)).start()
    bare: list[float] = []
    created: list[float] = []
    linked: list[float] = []
    idle: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(args.runs):
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                bare_read(fake.url, 100)
                bare.append(time.perf_counter() - started)

                empty = services_for(fake.url, Path(tmp) / f"empty{run}.db")
                try:
                    seconds, counts = timed_sync(empty)
                finally:
                    empty.close()
                assert counts["create"] == args.users, counts
                created.append(seconds)

                known = services_for(fake.url, Path(tmp) / f"known{run}.db")
                try:
                    seed_local_people(known, args.users)
                    seconds, counts = timed_sync(known)
                    assert counts.get("link") == args.users and counts["create"] == 0, counts
                    linked.append(seconds)
                    seconds, counts = timed_sync(known)
                    assert counts["update"] == counts.get("link", 0) == 0, counts
                    idle.append(seconds)
                finally:
                    known.close()
    finally:
        fake.stop()
    if not created:
        print("no run finished within --max-seconds", file=sys.stderr)
        return 1
    load = os.getloadavg()
    print(f"{args.users:,} users, {args.departments:,} departments; runs: {len(created)}")
    print(f"load average during the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    b, c, linking, i = (statistics.median(x) for x in (bare, created, linked, idle))
    print(f"bare httpx read                 {b:7.2f} s")
    print(f"first sync, all created         {c:7.2f} s  ({c / b:.1f}x bare)")
    print(
        f"first sync, all linked by key   {linking:7.2f} s  ({linking / b:.1f}x bare, "
        f"{linking / c:.2f}x created)"
    )
    print(f"no-change sync, two links each  {i:7.2f} s  ({i / b:.1f}x bare)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
