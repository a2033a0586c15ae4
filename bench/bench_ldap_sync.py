"""Directory sync speed against a local OpenLDAP slapd (traffic only to 127.0.0.1).

Generates a company (default 100,000 users, 2,000 departments, 5,000 groups of ~40 members),
bulk-loads it with slapadd, then times idhub in child processes (so peak RSS is the sync's
own): full syncs into a fresh SQLite database, no-change incremental runs, and incremental
runs after N modified users. Also times a bare ldap3 paged read of the same users, the floor
any ldap3-based sync sits on. Prints medians; everything is bounded by --max-seconds.

    python bench/bench_ldap_sync.py [--users 100000] [--runs 3] [--changes 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

SECRET = "bench-secret-key-0123456789abcdefghijklmnop"


def child(args: argparse.Namespace) -> None:
    """Runs one sync in this process and prints {"seconds", "rss_mb", "counts"}."""
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    settings = load_settings(Path(args.config), env={"IDHUB_SECRET_KEY": SECRET})
    services = Services(settings)
    started = time.perf_counter()
    report = services.directory_sync("bench").run(full=args.mode == "full")
    seconds = time.perf_counter() - started
    rss = peak_rss_mb()
    services.close()
    print(
        json.dumps(
            {"seconds": seconds, "rss_mb": rss, "counts": report.counts, "mode": report.mode}
        )
    )


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the current address space, so unlike
    ru_maxrss it does not include the (large) parent this child was forked from."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(config: Path, mode: str, timeout: float) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", "--config", str(config), "--mode", mode],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    if result.returncode != 0:
        raise RuntimeError(f"sync child failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


class PostgresTarget:
    """A throwaway database on a local PostgreSQL server, emptied before each full run."""

    def __init__(self, server: str) -> None:
        from sqlalchemy import create_engine, text

        self.server = server.rstrip("/")
        self.name = f"idhub_bench_{os.urandom(4).hex()}"
        self._admin = create_engine(f"{self.server}/postgres", isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = f"{self.server}/{self.name}"
        from idhub.adapters.database import apply_migrations, create_db_engine
        from idhub.config import DatabaseSettings

        self._engine = create_db_engine(DatabaseSettings(url=self.url))
        apply_migrations(self._engine)

    def empty(self) -> None:
        from sqlalchemy import text

        from idhub.adapters.db import metadata

        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        with self._engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))

    def drop(self) -> None:
        from sqlalchemy import text

        self._engine.dispose()
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()


def fresh_database(template: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copyfile(template, target)


def make_template(path: Path) -> None:
    from idhub.adapters.database import apply_migrations, create_db_engine
    from idhub.config import DatabaseSettings

    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{path}"))
    apply_migrations(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()


def bare_ldap3_read(url_port: int, page_size: int) -> tuple[float, int]:
    import ldap3
    from tests.slapd import PEOPLE_BASE, SERVICE_DN, SERVICE_PASSWORD

    server = ldap3.Server("127.0.0.1", port=url_port, get_info=ldap3.NONE)
    conn = ldap3.Connection(
        server, SERVICE_DN, SERVICE_PASSWORD, auto_bind=True, return_empty_attributes=False
    )
    started = time.perf_counter()
    count = 0
    cookie = None
    attributes = [
        "uid",
        "displayName",
        "cn",
        "mail",
        "telephoneNumber",
        "employeeNumber",
        "entryUUID",
        "pwdAccountLockedTime",
        "modifyTimestamp",
    ]
    while True:
        conn.search(
            PEOPLE_BASE,
            "(objectClass=inetOrgPerson)",
            attributes=attributes,
            paged_size=page_size,
            paged_cookie=cookie,
        )
        count += sum(1 for r in conn.response if r.get("type") == "searchResEntry")
        cookie = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
        if not cookie:
            break
    conn.unbind()
    return time.perf_counter() - started, count


def modify_users(slapd: Any, people: list[Any], n: int, round_: int) -> float:
    import ldap3

    admin = slapd.admin()
    started = time.perf_counter()
    step = max(1, len(people) // n)
    for person in people[::step][:n]:
        admin.modify(person.dn, {"mail": [(ldap3.MODIFY_REPLACE, [f"r{round_}.{person.mail}"])]})
    admin.unbind()
    return time.perf_counter() - started


def next_second() -> None:
    time.sleep(1.05 - (time.time() % 1.0))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--departments", type=int, default=2_000)
    parser.add_argument("--groups", type=int, default=5_000)
    parser.add_argument("--members", type=int, default=40, help="average members per group")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--page-size", type=int, default=1_000)
    parser.add_argument("--max-seconds", type=float, default=1_500)
    parser.add_argument(
        "--postgres",
        help="sync into PostgreSQL at this server URL instead of SQLite "
        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--config")
    parser.add_argument("--mode")
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    from tests.slapd import (
        GROUPS_BASE,
        PEOPLE_BASE,
        SERVICE_DN,
        SERVICE_PASSWORD,
        Slapd,
        company_ldif,
    )

    deadline = time.monotonic() + args.max_seconds
    work = Path(tempfile.mkdtemp(prefix="idhub-bench-ldap-"))
    rows: list[tuple[str, str, str, str]] = []
    slapd = None
    pg: PostgresTarget | None = None
    try:
        started = time.perf_counter()
        company = company_ldif(
            users=args.users,
            departments=args.departments,
            groups=args.groups,
            members_per_group=args.members,
            disabled_every=50,
        )
        generate_s = time.perf_counter() - started
        slapd = Slapd(work / "ldap", tls=False, map_size=8 << 30)
        started = time.perf_counter()
        slapd.slapadd(company.ldif)
        load_s = time.perf_counter() - started
        memberships = sum(len(m) for m in company.groups.values())
        del company.ldif
        slapd.start()
        print(
            f"directory: {args.users} users, {args.departments} departments, "
            f"{args.groups} groups ({memberships} member values); "
            f"LDIF generated in {generate_s:.1f}s, slapadd in {load_s:.1f}s",
            flush=True,
        )

        password = work / "bind.pw"
        password.write_text(SERVICE_PASSWORD, encoding="utf-8")
        template = work / "template.db"
        db = work / "idhub.db"
        if args.postgres:
            pg = PostgresTarget(args.postgres)
            db_url = pg.url
        else:
            make_template(template)
            db_url = f"sqlite:///{db}"
        config = work / "idhub.toml"
        config.write_text(
            f'var_dir = "{work / "var"}"\n\n[database]\nurl = "{db_url}"\n\n'
            f"[directory.ldap.bench]\n"
            f'url = "{slapd.url}"\nbind_dn = "{SERVICE_DN}"\n'
            f'bind_password_file = "{password}"\n'
            f'user_base = "{PEOPLE_BASE}"\ngroup_base = "{GROUPS_BASE}"\n'
            f"page_size = {args.page_size}\nclock_skew = 0\ntimeout = 120\n",
            encoding="utf-8",
        )

        bare = [bare_ldap3_read(slapd.port, args.page_size) for _ in range(2)]
        bare_s = statistics.median(b[0] for b in bare)
        rows.append(
            (
                "bare ldap3 paged read (floor)",
                f"{bare_s:.2f} s",
                f"{bare[0][1] / bare_s:,.0f} entries/s",
                "-",
            )
        )
        print(f"bare ldap3 read: {bare_s:.2f}s", flush=True)

        fulls = []
        for run in range(args.runs):
            if time.monotonic() > deadline:
                break
            if pg is not None:
                pg.empty()
            else:
                fresh_database(template, db)
            result = run_child(config, "full", timeout=max(60, deadline - time.monotonic()))
            fulls.append(result)
            print(
                f"full run {run + 1}: {result['seconds']:.1f}s, peak RSS "
                f"{result['rss_mb']:.0f} MB, {result['counts']}",
                flush=True,
            )
        if fulls:
            secs = statistics.median(r["seconds"] for r in fulls)
            rss = max(r["rss_mb"] for r in fulls)
            rows.append(
                (
                    f"full sync, {args.users:,} users (first load)",
                    f"{secs:.1f} s",
                    f"{args.users / secs:,.0f} users/s",
                    f"{rss:.0f} MB",
                )
            )

        next_second()
        idle = []
        for _ in range(args.runs):
            if time.monotonic() > deadline:
                break
            idle.append(run_child(config, "incremental", timeout=120))
        if idle:
            secs = statistics.median(r["seconds"] for r in idle)
            rows.append(
                (
                    "incremental, no changes",
                    f"{secs:.2f} s",
                    f"seen {idle[-1]['counts']['seen']}",
                    f"{max(r['rss_mb'] for r in idle):.0f} MB",
                )
            )

        changed = []
        for round_ in range(args.runs):
            if time.monotonic() > deadline:
                break
            modify_users(slapd, company.people, args.changes, round_)
            next_second()
            result = run_child(config, "incremental", timeout=120)
            changed.append(result)
            print(
                f"incremental after {args.changes} changes: {result['seconds']:.2f}s "
                f"{result['counts']}",
                flush=True,
            )
        if changed:
            secs = statistics.median(r["seconds"] for r in changed)
            rows.append(
                (
                    f"incremental, {args.changes:,} changed users",
                    f"{secs:.2f} s",
                    f"updated {changed[-1]['counts']['update']}",
                    f"{max(r['rss_mb'] for r in changed):.0f} MB",
                )
            )

        if time.monotonic() < deadline:
            full_again = run_child(config, "full", timeout=max(60, deadline - time.monotonic()))
            rows.append(
                (
                    "full reconcile, no changes",
                    f"{full_again['seconds']:.1f} s",
                    f"{args.users / full_again['seconds']:,.0f} users/s",
                    f"{full_again['rss_mb']:.0f} MB",
                )
            )
    finally:
        if slapd is not None:
            slapd.stop()
        if pg is not None:
            pg.drop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    widths = [
        max(len(r[i]) for r in [("operation", "median", "rate", "peak RSS"), *rows])
        for i in range(4)
    ]
    for row in [("operation", "median", "rate", "peak RSS"), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    print(
        f"(medians of up to {args.runs} runs; {'PostgreSQL' if args.postgres else 'SQLite'}; "
        f"{os.cpu_count()} CPUs; "
        "peer: authentik's ldap3 sync is reported at ~10 users/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
