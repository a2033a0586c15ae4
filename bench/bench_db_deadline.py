"""What idhub's database timeouts cost per round trip: `SELECT 1` on a pooled connection through
idhub's engine (psycopg connection with an answer deadline, stall cool-down on checkout, the
server-side statement timeout) against a plain SQLAlchemy engine on the same PostgreSQL, in
the same run, interleaved. Bounded: 5 rounds of 2,000 round trips per engine and path.

Needs the local PostgreSQL (127.0.0.1:5432, database `test`); prints a table."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sqlalchemy import Engine, create_engine, text

from idhub.adapters.database import create_db_engine
from idhub.config import DatabaseSettings

URL = os.environ.get("IDHUB_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
ROUNDS, COUNT = 5, 2_000


def core_select(engine: Engine) -> Callable[[], None]:
    query = text("SELECT 1")

    def once() -> None:
        with engine.connect() as conn:
            conn.execute(query).scalar_one()

    return once


def raw_select(engine: Engine) -> Callable[[], None]:
    def once() -> None:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            cursor.close()
        finally:
            connection.close()

    return once


def measure(run: Callable[[], None]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call over COUNT calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(COUNT):
        run()
    return (
        (time.perf_counter() - wall) / COUNT * 1e6,
        (time.process_time() - cpu) / COUNT * 1e6,
    )


def main() -> int:
    idhub = create_db_engine(DatabaseSettings(url=URL, pool_size=2))
    plain = create_engine(
        URL.replace("postgresql://", "postgresql+psycopg://"), pool_size=2, pool_pre_ping=True
    )
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(ROUNDS):
            for path, make in (("core", core_select), ("raw", raw_select)):
                for name, engine in (("plain", plain), ("idhub", idhub)):
                    results.setdefault((path, name), []).append(measure(make(engine)))
    finally:
        idhub.dispose()
        plain.dispose()
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {ROUNDS} rounds of {COUNT}")
    print(f"{'path':<6} {'engine':<7} {'wall µs':>9} {'CPU µs':>8} {'CPU ratio':>10}")
    for path in ("core", "raw"):
        base_cpu = statistics.median(c for _, c in results[(path, "plain")])
        for name in ("plain", "idhub"):
            wall = statistics.median(w for w, _ in results[(path, name)])
            cpu = statistics.median(c for _, c in results[(path, name)])
            print(f"{path:<6} {name:<7} {wall:>9.1f} {cpu:>8.1f} {cpu / base_cpu:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
