"""`idhub backup` / `idhub restore` speed: an SQLite database holding EVENTS audit events (and
a few users, clients and keys) is backed up, restored into an empty SQLite file and into an
empty PostgreSQL database created for the run (`idhub_bench_backup`, dropped afterwards), and
the restored chain is verified. Prints seconds per step, rows per second and the archive size.

    .venv/bin/python bench/bench_backup.py [--events 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
DATABASE = "idhub_bench_backup"
SECRET_KEY = "bench-backup-secret-key-0123456789abcdefghij"


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    try:
        yield f"{PG_SERVER}/{DATABASE}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        admin.dispose()


def services_for(root: Path, name: str, db_url: str) -> object:
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    config = root / f"{name}.toml"
    config.write_text(
        f'var_dir = "{root / name}"\n[database]\nurl = "{db_url}"\n'
        f'[policy]\ndir = "{root / name / "policies"}"\nwatch = false\n',
        encoding="utf-8",
    )
    return Services(load_settings(config, env={"IDHUB_SECRET_KEY": SECRET_KEY}))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    opts = parser.parse_args()
    from idhub.core.audit import Actor, EventType, PendingEvent

    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="idhub-bench-backup-") as tmp, pg_database() as pg:
        root = Path(tmp)
        source = services_for(root, "src", f"sqlite:///{root / 'src.db'}")
        source.migrate()  # type: ignore[attr-defined]
        source.keys.ensure_active(lambda _line: None)  # type: ignore[attr-defined]
        audit = source.audit_log  # type: ignore[attr-defined]
        batch = [
            PendingEvent(EventType.TOKEN_ISSUED, Actor("client", "oa"), target=f"user-{n}",
                         details={"grant_type": "client_credentials", "client_id": "oa", "n": n})
            for n in range(1000)
        ]  # fmt: skip
        for _ in range(opts.events // 1000):
            audit.record_many(batch)
        archive = root / "idhub.tar.gz"
        started = time.perf_counter()
        summary = source.backup(archive)  # type: ignore[attr-defined]
        seconds = time.perf_counter() - started
        total = sum(summary.tables.values())
        rows.append(("backup (SQLite)", seconds, total))
        source.close()  # type: ignore[attr-defined]
        for name, url in (("sqlite", f"sqlite:///{root / 'dst.db'}"), ("postgresql", pg)):
            target = services_for(root, f"dst-{name}", url)
            started = time.perf_counter()
            restored = target.restore(archive)  # type: ignore[attr-defined]
            seconds = time.perf_counter() - started
            assert restored.notes[-1].startswith("audit chain verifies"), restored.notes
            rows.append((f"restore into {name} (+ verify)", seconds, total))
            target.close()  # type: ignore[attr-defined]
        size = archive.stat().st_size
    print(
        f"{opts.events} audit events ({total} rows), archive {size / 1e6:.1f} MB, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'step':36} {'seconds':>8} {'rows/s':>9}")
    for step, seconds, count in rows:
        print(f"{step:36} {seconds:>8.1f} {count / seconds:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
