"""DingTalk contacts sync speed against the local DingTalk fake (tests/dingtalk_fake.py, on
127.0.0.1, in this process): a DingTalk-shaped org of 20,000 users in 1,000 departments.

Times, as medians of --runs: a bare httpx read of the same API calls (the floor any
client sits on, measured in the same run), idhub's first sync into a fresh SQLite database,
and a no-change sync. Reports the API calls each made (the floor is one call per page plus one
per department for the tree, not one per user) and the load average. Bounded by --max-seconds.

    python bench/bench_dingtalk_sync.py [--users 20000] [--departments 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.dingtalk_fake import APP_KEY, APP_SECRET, DingTalkFake, company  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdefghijklmnop"


def bare_read(url: str, page_size: int) -> int:
    """What any client must do: token, walk the tree (each department's details and
    children), page every department's members."""
    calls = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        token = http.get("/gettoken", params={"appkey": APP_KEY, "appsecret": APP_SECRET}).json()
        q = {"access_token": token["access_token"]}
        calls += 1
        queue, seen = [1], 0
        while queue:
            dept = queue.pop(0)
            http.post("/topapi/v2/department/get", params=q, json={"dept_id": dept})
            calls += 1
            kids = http.post("/topapi/v2/department/listsub", params=q, json={"dept_id": dept})
            calls += 1
            queue.extend(d["dept_id"] for d in kids.json()["result"])
            cursor = 0
            while True:
                body = {"dept_id": dept, "cursor": cursor, "size": page_size}
                page = http.post("/topapi/v2/user/list", params=q, json=body).json()["result"]
                calls += 1
                seen += len(page["list"])
                if not page["has_more"]:
                    break
                cursor = page["next_cursor"]
    return calls


def services_for(url: str, db: Path) -> Any:
    """idhub's services on a fresh SQLite file `db`, with the fake at `url` as source
    `dingtalk:bench`."""
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    config = db.with_suffix(".toml")
    config.write_text(
        f'var_dir = "{db.parent}"\n[database]\nurl = "sqlite:///{db}"\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n'
        f'[directory.dingtalk.bench]\nbase_url = "{url}"\napp_key = "{APP_KEY}"\n'
        'app_secret_env = "BENCH_DT_SECRET"\n',
        encoding="utf-8",
    )
    env = {"IDHUB_SECRET_KEY": SECRET, "BENCH_DT_SECRET": APP_SECRET}
    services = Services(load_settings(config, env=env))
    services.migrate()
    return services


def idhub_sync(url: str, db: Path) -> tuple[float, dict[str, int]]:
    services = services_for(url, db)
    try:
        started = time.perf_counter()
        report = services.oa_sync("dingtalk:bench").run()
        seconds = time.perf_counter() - started
    finally:
        services.close()
    return seconds, report.counts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--departments", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    fake = DingTalkFake(company(users=args.users, departments=args.departments)).start()
    bare: list[float] = []
    first: list[float] = []
    idle: list[float] = []
    calls: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(args.runs):
                if time.monotonic() > deadline:
                    break
                fake.calls.clear()
                started = time.perf_counter()
                bare_calls = bare_read(fake.url, 100)
                bare.append(time.perf_counter() - started)
                db = Path(tmp) / f"run{run}.db"
                fake.calls.clear()
                seconds, counts = idhub_sync(fake.url, db)
                assert counts["create"] == args.users, counts
                first.append(seconds)
                calls = dict(fake.calls)
                seconds, counts = idhub_sync(fake.url, db)
                assert counts["create"] == counts["update"] == 0, counts
                idle.append(seconds)
    finally:
        fake.stop()
    if not first:
        print("no run finished within --max-seconds", file=sys.stderr)
        return 1
    load = os.getloadavg()
    total = sum(calls.values())
    print(f"{args.users:,} users, {args.departments:,} departments; runs: {len(first)}")
    print(f"load average during the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"API calls per idhub sync: {total:,} ({calls}); bare read: {bare_calls:,}")
    b, f, i = (statistics.median(x) for x in (bare, first, idle))
    print(f"bare httpx read   {b:7.2f} s")
    print(f"first sync        {f:7.2f} s  ({args.users / f:,.0f} users/s, {f / b:.1f}x bare)")
    print(f"no-change sync    {i:7.2f} s  ({i / b:.1f}x bare)")
    print("goal: first sync <= 60 s:", "met" if f <= 60 else "NOT met")
    return 0 if f <= 60 else 1


if __name__ == "__main__":
    sys.exit(main())
