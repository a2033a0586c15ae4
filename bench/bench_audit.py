"""Audit trail speed on SQLite and PostgreSQL (the local server), each figure the median of
several runs:

  append   sustained events/s: one thread calling `record` back to back; 8 threads at once
           (their appends share group commits); `record_many` in batches of 100
  units    units of work (a change - a revoked jti - and its event in one transaction) from 16
           threads, and from 2 processes of 8 threads: each in its own transaction, and grouped
           (many units in one transaction and commit, adapters/unit_group.py); runs alternate
  latency  `record` p50 / p99 for a lone caller (what a token request pays)
  verify   `audit verify` (the store's chain walk) over 1,000,000 events generated with
           batched inserts
  token    /token client-credentials p50 over real HTTP (uvicorn, one worker) with the audit
           write and, for comparison, with a no-op recorder (skip with --no-token)
  cpu      (--cpu, instead of the above) this process's CPU time per append - one thread, 8
           threads, `record_many` x100; two processes of two threads appending to one
           database (their CPU per event, as a server's two workers) - and per
           client-credentials token with the provider's `token()` called in process (metrics
           on, as the server runs), with the audit write and with a no-op recorder, so the
           audit's share of a token shows without HTTP

Usage: python bench/bench_audit.py [--quick] [--runs N] [--verify-events N] [--no-token]
                                  [--backends sqlite,postgresql] [--only-units] [--cpu]
Traffic goes only to 127.0.0.1; the PostgreSQL database is a throwaway one, dropped after.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.database import apply_migrations, create_db_engine
from idhub.config import DatabaseSettings
from idhub.core.audit import (
    Actor,
    EventType,
    PendingEvent,
    RequestContext,
)
from idhub.core.audit_chain import (
    GENESIS_HASH,
    canonical_bytes,
    canonical_tail,
    chain_hash,
)
from idhub.core.clock import SystemClock

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
CTX = RequestContext("10.0.0.1", "bench/1.0", "req-00000000")
DETAILS = {"grant_type": "client_credentials", "audience": "reimburse", "scope": "authz"}


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            engine = create_db_engine(DatabaseSettings(url=url))
            apply_migrations(engine)
            engine.dispose()
            yield url
        return
    name = f"idhub_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{PG_SERVER}/{name}"
    try:
        engine = create_db_engine(DatabaseSettings(url=url))
        apply_migrations(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # TRUNCATE, not DELETE: a million dead index entries above a restarted chain
            # would make every tail lookup wade through them and measure that instead.
            conn.execute(text("TRUNCATE audit_events, audit_anchor"))
        else:
            conn.execute(text("DELETE FROM audit_events"))
            conn.execute(text("DELETE FROM audit_anchor"))
    if url.startswith("sqlite"):
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM")
    engine.dispose()


def new_log(url: str) -> tuple[SqlAuditLog, Any]:
    engine = create_db_engine(DatabaseSettings(url=url))
    return SqlAuditLog(engine, SystemClock()), engine


def cpu_seconds() -> float:
    """CPU time of this process, every thread (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(log: SqlAuditLog, i: int) -> None:
    log.record(EventType.TOKEN_ISSUED, actor=Actor("client", f"c{i % 50}"), target="reimburse",
               details={**DETAILS, "jti": f"j{i}"}, ctx=CTX)  # fmt: skip


def append_single(url: str, seconds: float) -> float:
    log, engine = new_log(url)
    one(log, 0)  # warm the pool
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one(log, count)
        count += 1
    rate = count / (time.perf_counter() - start)
    engine.dispose()
    return rate


def _threads_rate(work: Callable[[int], None], counts: list[int]) -> float:
    """Runs `work(t)` on one thread per entry of `counts` (each counts its own operations
    there); the operations per second of all of them together."""
    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(len(counts))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def append_threads(url: str, seconds: float, threads: int = 8) -> float:
    log, engine = new_log(url)
    one(log, 0)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(t: int) -> None:
        while time.perf_counter() < stop:
            one(log, counts[t])
            counts[t] += 1

    rate = _threads_rate(work, counts)
    engine.dispose()
    return rate


def append_batches(url: str, seconds: float, size: int = 100) -> float:
    log, engine = new_log(url)
    batch = [PendingEvent(EventType.SYNC_CHANGE, Actor.system("sync"), f"user:{i}",
                          details={"field": "department", "before": "/a", "after": "/b"})
             for i in range(size)]  # fmt: skip
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        log.record_many(batch)
        count += size
    rate = count / (time.perf_counter() - start)
    engine.dispose()
    return rate


def units_threads(
    url: str, seconds: float, *, group: bool, threads: int = 16, prefix: str = "u"
) -> float:
    """Units of work per second from `threads` threads, each a change and its event."""
    from idhub.adapters.token_store import SqlTokenStore
    from idhub.adapters.unit_of_work import SqlUnitOfWork

    log, engine = new_log(url)
    uow = SqlUnitOfWork(engine, log, group=group)
    tokens = SqlTokenStore(engine)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(t: int) -> None:
        while time.perf_counter() < stop:
            with uow.atomic() as tx:
                now = time.time()
                tokens.revoke_jti(f"{prefix}{t}-{counts[t]}", expires_at=now + 60, now=now)
                tx.record(EventType.TOKEN_REVOKED, actor=Actor("client", f"c{t}"),
                          target="reimburse", details=DETAILS, ctx=CTX)  # fmt: skip
            counts[t] += 1

    rate = _threads_rate(work, counts)
    engine.dispose()
    return rate


def _units_worker(url: str, seconds: float, group: bool, prefix: str, start: Any, out: Any) -> None:
    start.wait(60)
    out.put(units_threads(url, seconds, group=group, threads=8, prefix=prefix))


def units_processes(url: str, seconds: float, *, group: bool) -> float:
    """The same from two processes of 8 threads each (two workers or replicas)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_units_worker, args=(url, seconds, group, f"p{n}-", start, out))
        for n in range(2)
    ]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # both have imported idhub and are waiting
    start.set()
    rates = [out.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(30)
    return float(sum(rates))


def empty_units(url: str) -> None:
    empty(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM revoked_tokens"))
    engine.dispose()


def units_rows(kind: str, url: str, runs: int, seconds: float) -> list[tuple[str, str, str]]:
    shapes = [
        (label, grouped)
        for label in ("16 threads", "2 processes x 8 threads")
        for grouped in (False, True)
    ]
    rates: dict[tuple[str, bool], list[float]] = {shape: [] for shape in shapes}
    for _ in range(runs):
        for label, grouped in shapes:  # alternating, so all see the same machine
            empty_units(url)
            run = units_threads if label == "16 threads" else units_processes
            rates[(label, grouped)].append(run(url, seconds, group=grouped))
    rows = []
    for (label, grouped), found in rates.items():
        name = f"units of work, {label}" + (", grouped" if grouped else ", one each")
        spread = "-".join(f"{r:,.0f}" for r in (min(found), max(found)))
        rows.append((kind, name, f"{statistics.median(found):,.0f} units/s ({spread})"))
    return rows


def latency(url: str, n: int) -> tuple[float, float]:
    log, engine = new_log(url)
    for i in range(20):
        one(log, i)
    samples = []
    for i in range(n):
        t = time.perf_counter()
        one(log, i)
        samples.append(time.perf_counter() - t)
    engine.dispose()
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000


def bare_commit(url: str, n: int) -> float:
    """p50 of the cheapest durable write this database can do (one-row INSERT + COMMIT on a
    scratch table): the floor under any synchronous audit write, measured in the same run
    so a busy disk shows up as such."""
    engine = create_db_engine(DatabaseSettings(url=url))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench_commit (id INTEGER PRIMARY KEY, v TEXT)"))
    samples = []
    with engine.connect() as conn:
        for i in range(n):
            t = time.perf_counter()
            conn.execute(text("INSERT INTO bench_commit (id, v) VALUES (:i, 'x')"), {"i": i})
            conn.commit()
            samples.append(time.perf_counter() - t)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE bench_commit"))
    engine.dispose()
    return statistics.median(samples) * 1000


def generate(url: str, n: int, batch: int = 50_000) -> float:
    """Writes a valid chain of n events straight into the table, in big batches."""
    engine = create_db_engine(DatabaseSettings(url=url))
    pg = engine.dialect.name == "postgresql"
    started = time.perf_counter()
    prev, seq, ts = GENESIS_HASH, 1, 1_790_000_000.0
    cols = ("seq, ts, event_type, actor_type, actor_id, target, outcome, client_ip, user_agent,"
            " request_id, details, prev_hash, hash")  # fmt: skip
    while seq <= n:
        rows = []
        for _ in range(min(batch, n - seq + 1)):
            actor = f"c{seq % 50}"
            details = f'{{"audience":"reimburse","grant_type":"client_credentials","jti":"j{seq}"}}'
            tail = canonical_tail(ts=ts, event_type="token.issued", actor_type="client",
                                  actor_id=actor, target="reimburse", outcome="success",
                                  client_ip="10.0.0.1", user_agent="bench/1.0",
                                  request_id=None, details_json=details)  # fmt: skip
            digest = chain_hash(prev, canonical_bytes(seq, tail))
            rows.append((seq, ts, "token.issued", "client", actor, "reimburse", "success",
                         "10.0.0.1", "bench/1.0", None, details, prev, digest))  # fmt: skip
            prev, seq, ts = digest, seq + 1, ts + 0.001
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            if pg:
                with cur.copy(f"COPY audit_events ({cols}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ",".join("?" * 13)
                insert = f"INSERT INTO audit_events ({cols}) VALUES ({marks})"  # noqa: S608
                cur.executemany(insert, rows)
            raw.commit()
        finally:
            raw.close()
    if pg:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE audit_events"))
            conn.commit()
    engine.dispose()
    return time.perf_counter() - started


def verify_time(url: str) -> tuple[float, int]:
    log, engine = new_log(url)
    start = time.perf_counter()
    report = log.verify()
    took = time.perf_counter() - start
    engine.dispose()
    if not report.ok:
        raise SystemExit(f"generated chain does not verify: {report.problem}")
    return took, report.checked


BENCH_KEY = "bench-secret-key-0123456789abcdefghijklmnop"


def _settings(url: str, port: int, tmp: str) -> Any:
    from idhub.config import load_settings

    return load_settings(None, cwd=Path(tmp), env={
        "IDHUB_DATABASE_URL": url, "IDHUB_ISSUER": f"http://127.0.0.1:{port}",
        "IDHUB_SECRET_KEY": BENCH_KEY, "IDHUB_VAR_DIR": tmp,
        "IDHUB_POLICY_DIR": str(REPO / "policies"),
    })  # fmt: skip


def serve(url: str, port: int, tmp: str, audited: bool) -> None:
    """The server half of `token_p50`, in its own process like a real deployment (a client
    in the same process would fight the server for the GIL and inflate every wait)."""
    import uvicorn

    from idhub.bootstrap import Services
    from idhub.web.app import create_app

    class NoAudit:
        def record(self, *args: Any, **kwargs: Any) -> None:
            pass

        def record_many(self, *args: Any, **kwargs: Any) -> None:
            pass

    services = Services(_settings(url, port, tmp))
    if not audited:
        services.__dict__["audit"] = NoAudit()
    uvicorn.run(create_app(services), host="127.0.0.1", port=port, log_level="warning")


def token_p50(url: str, n: int) -> tuple[float, float, float]:
    """p50 of /token (client_credentials, ES256) with the real audit write and with none,
    plus the database's bare commit. Two servers run side by side on the same database and
    the requests alternate, so both see the same disk and CPU weather (on a shared machine
    the commit latency swings from 0.5 to 4 ms within a minute)."""
    import subprocess

    import httpx

    from idhub.bootstrap import Services

    empty(url)
    with tempfile.TemporaryDirectory() as tmp:
        ports = {"audited": _free_port(), "unaudited": _free_port()}
        services = Services(_settings(url, ports["audited"], tmp))
        services.keys.ensure_active(lambda _: None)
        client_id = f"bench{secrets.token_hex(3)}"
        _, secret = services.clients.register(
            client_id, grant_types=["client_credentials"], scope="authz",
            token_endpoint_auth_method="client_secret_basic",
        )  # fmt: skip
        services.close()
        children = [
            subprocess.Popen(
                [sys.executable, __file__, "--serve", url, str(port), tmp, mode],
                stderr=subprocess.DEVNULL,
            )
            for mode, port in ports.items()
        ]
        engine = create_db_engine(DatabaseSettings(url=url))
        try:
            clients = {
                mode: httpx.Client(base_url=f"http://127.0.0.1:{port}")
                for mode, port in ports.items()
            }
            for http in clients.values():
                deadline = time.monotonic() + 30
                while True:
                    try:
                        http.get("/healthz")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE bench_commit (id INTEGER PRIMARY KEY, v TEXT)"))
            samples: dict[str, list[float]] = {"audited": [], "unaudited": [], "commit": []}
            form = {"grant_type": "client_credentials", "resource": "idhub", "scope": "authz"}
            with engine.connect() as conn:
                for i in range(n + 50):
                    for mode, http in clients.items():
                        t = time.perf_counter()
                        r = http.post("/token", data=form, auth=(client_id, str(secret)))
                        if i >= 50:
                            samples[mode].append(time.perf_counter() - t)
                        assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    conn.execute(
                        text("INSERT INTO bench_commit (id, v) VALUES (:i, 'x')"), {"i": i}
                    )
                    conn.commit()
                    if i >= 50:
                        samples["commit"].append(time.perf_counter() - t)
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE bench_commit"))
            for http in clients.values():
                http.close()
        finally:
            engine.dispose()
            for child in children:
                child.terminate()
                child.wait(10)
    p50 = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    return p50["audited"], p50["unaudited"], p50["commit"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "audited")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 100,000 events")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--verify-events", type=int)
    parser.add_argument(
        "--no-token",
        dest="token",
        action="store_false",
        help="skip the /token comparison (two servers, ~1 min per backend)",
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--only-units", action="store_true", help="only the units-of-work rows")
    parser.add_argument("--cpu", action="store_true", help="only the CPU-per-append rows")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 3.0
    if args.cpu:
        print_rows(cpu_rows(args.backends.split(","), args.runs, seconds))
        return
    n_verify = args.verify_events or (100_000 if args.quick else 1_000_000)
    rows: list[tuple[str, str, str]] = []
    for kind in args.backends.split(","):
        with database(kind) as url:

            def fresh(fn: Callable[[str, float], float]) -> Callable[[], float]:
                def run() -> float:
                    empty(url)
                    return fn(url, seconds)

                return run

            rows += units_rows(kind, url, args.runs, seconds)
            if args.only_units:
                continue
            for label, fn in (
                ("append, 1 thread", append_single),
                ("append, 8 threads", append_threads),
                ("record_many x100", append_batches),
            ):
                rate = median_of(args.runs, fresh(fn))
                rows.append((kind, label, f"{rate:,.0f} events/s"))
            empty(url)
            lat = [latency(url, 500 if args.quick else 2000) for _ in range(args.runs)]
            p50 = statistics.median(x[0] for x in lat)
            p99 = statistics.median(x[1] for x in lat)
            rows.append((kind, "record latency", f"p50 {p50:.3f} ms, p99 {p99:.3f} ms"))
            floor = statistics.median(
                bare_commit(url, 300 if args.quick else 1000) for _ in range(args.runs)
            )
            rows.append((kind, "bare INSERT+COMMIT (floor)", f"p50 {floor:.3f} ms"))
            empty(url)
            built = generate(url, n_verify)
            runs = [verify_time(url) for _ in range(args.runs)]
            took = statistics.median(r[0] for r in runs)
            count = runs[0][1]
            result = f"{took:.1f} s ({count / took:,.0f}/s; generated in {built:.0f} s)"
            rows.append((kind, f"verify {count:,} events", result))
            if args.token:
                with_audit, without, commit = token_p50(url, 300 if args.quick else 1000)
                added = with_audit - without
                result = (
                    f"{with_audit:.2f} / {without:.2f} ms (+{added:.2f} ms; "
                    f"bare commit meanwhile {commit:.2f} ms)"
                )
                rows.append((kind, "/token p50 with / without audit", result))
            print(f"# {kind} done", file=sys.stderr, flush=True)
    print_rows(rows)


def print_rows(rows: list[tuple[str, str, str]]) -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    width = max(len(r[1]) for r in rows)
    print(f"{'backend':<11} {'operation':<{width}}  result")
    for kind, op, result in rows:
        print(f"{kind:<11} {op:<{width}}  {result}")
    print(f"peak RSS {rss:.0f} MiB; load average {Path('/proc/loadavg').read_text().split()[:3]}")


# ------------------------------------------------------------------ CPU per append / token


def cpu_append(url: str, seconds: float, threads: int, batch: int) -> float:
    """µs of this process's CPU per event: `threads` threads calling `record` (batch 1) or
    `record_many` with `batch` events, back to back for `seconds`."""
    log, engine = new_log(url)
    one(log, 0)  # warm the pool
    events = [PendingEvent(EventType.TOKEN_ISSUED, Actor("client", f"c{i % 50}"), "reimburse",
                           details={**DETAILS, "jti": f"j{i}"}, ctx=CTX)
              for i in range(batch)]  # fmt: skip
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(t: int) -> None:
        while time.perf_counter() < stop:
            if batch == 1:
                one(log, counts[t])
            else:
                log.record_many(events)
            counts[t] += batch

    started = cpu_seconds()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    used = cpu_seconds() - started
    engine.dispose()
    return used / sum(counts) * 1e6


def _cpu_append_worker(url: str, seconds: float, threads: int, start: Any, out: Any) -> None:
    start.wait(60)
    log, engine = new_log(url)
    one(log, 0)
    counts = [0] * threads
    began = cpu_seconds()
    stop = time.perf_counter() + seconds

    def work(t: int) -> None:
        while time.perf_counter() < stop:
            one(log, counts[t])
            counts[t] += 1

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((cpu_seconds() - began, sum(counts)))
    engine.dispose()


def cpu_append_processes(url: str, seconds: float, threads: int = 2) -> float:
    """µs of CPU per event with two processes (a server's two workers) of `threads` threads
    each appending to one database at once: their writers take turns on the database, so
    this counts what waiting for the other process's turn costs too."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_cpu_append_worker, args=(url, seconds, threads, start, out))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # both have imported idhub and are waiting
    start.set()
    found = [out.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(30)
    return sum(f[0] for f in found) / sum(f[1] for f in found) * 1e6


def cpu_token(url: str, n: int) -> tuple[float, float]:
    """µs of CPU per client-credentials token through the provider's `token()` in process,
    with the audit write and with a no-op recorder in its place (alternating blocks)."""
    import base64

    from bench_oidc import init_idhub

    from idhub.bootstrap import Services
    from idhub.config import load_settings
    from idhub.oidc.messages import OAuthRequestData

    with tempfile.TemporaryDirectory() as tmp:
        config, _env = init_idhub(Path(tmp), url)
        services = Services(load_settings(config, env={}))
        _, secret = services.clients.register(
            "bench-cc", grant_types=["client_credentials"], scope="authz",
            allowed_audiences=["reimburse"],
        )  # fmt: skip
        services.start_metrics()
        basic = base64.b64encode(f"bench-cc:{secret}".encode()).decode()
        form = {"grant_type": "client_credentials", "resource": "reimburse"}
        headers = {"content-type": "application/x-www-form-urlencoded",
                   "authorization": f"Basic {basic}"}  # fmt: skip
        data = OAuthRequestData(
            "POST", services.settings.server.issuer + "/token", headers, form,
            {k: [v] for k, v in form.items()}, CTX,
        )  # fmt: skip
        minter = services.token_minter
        audit = minter._audit  # swapped below to compare

        class NoAudit:
            def record(self, *args: Any, **kwargs: Any) -> None:
                pass

            def record_many(self, *args: Any, **kwargs: Any) -> None:
                pass

        def block(recorder: Any) -> float:
            minter._audit = recorder
            started = cpu_seconds()
            for _ in range(n):
                response = services.oidc.token(data)
                assert response.status == 200, response
            return (cpu_seconds() - started) / n * 1e6

        block(audit)
        block(NoAudit())
        with_audit, without = [], []
        for _ in range(3):
            with_audit.append(block(audit))
            without.append(block(NoAudit()))
        services.close()
    return statistics.median(with_audit), statistics.median(without)


def cpu_rows(kinds: list[str], runs: int, seconds: float) -> list[tuple[str, str, str]]:
    rows = []
    for kind in kinds:
        with database(kind) as url:
            for label, threads, batch in (
                ("CPU per append, 1 thread", 1, 1),
                ("CPU per append, 8 threads", 8, 1),
                ("CPU per event, record_many x100", 1, 100),
            ):
                found = []
                for _ in range(runs):
                    empty(url)
                    found.append(cpu_append(url, seconds, threads, batch))
                spread = "-".join(f"{r:,.0f}" for r in (min(found), max(found)))
                rows.append((kind, label, f"{statistics.median(found):,.0f} µs ({spread})"))
                print(f"# {rows[-1]}", file=sys.stderr, flush=True)
            found = []
            for _ in range(runs):
                empty(url)
                found.append(cpu_append_processes(url, seconds))
            spread = "-".join(f"{r:,.0f}" for r in (min(found), max(found)))
            label = "CPU per append, 2 processes x 2 threads"
            rows.append((kind, label, f"{statistics.median(found):,.0f} µs ({spread})"))
            print(f"# {rows[-1]}", file=sys.stderr, flush=True)
        runs_found = []
        for _ in range(runs):
            with database(kind) as url:  # `idhub init` wants a database of its own
                # A durable commit on PostgreSQL takes ~1-20 ms here: fewer tokens there.
                runs_found.append(cpu_token(url, 1000 if kind == "sqlite" else 300))
        audited = statistics.median(r[0] for r in runs_found)
        bare = statistics.median(r[1] for r in runs_found)
        result = f"{audited:,.0f} / {bare:,.0f} µs (audit +{audited - bare:,.0f} µs)"
        rows.append((kind, "CPU per cc token() with / without audit", result))
        print(f"# {kind} done", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    main()
