"""A flood of failing anonymous requests: what it costs the server and the audit trail.

`idhub serve --workers 2` on SQLite, loaded by wrk on 127.0.0.1 with `/token` requests of a
client that does not exist (HTTP Basic `nobody:wrong`, all from one address): each is an RFC
6749 `invalid_client` 401; after `[throttle] client_ip_limit` failures the client throttle
refuses them before any secret is checked. Prints the server CPU per request (from /proc, the
server and its workers), the rate, the answers that were not 401, and how many audit events
the flood wrote per 1,000 requests. With the per-address budget of failure events
(core/failure_audit.py) the events stop at `[defences] anonymous_writes` per kind, address,
window and worker plus one `audit.suppressed` per window; without it (an older tree on
PYTHONPATH) every request writes one or two. Everything lives in a temporary directory.

    PYTHONPATH=src:bench .venv/bin/python bench/bench_anon_flood.py [--duration 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench_oidc import (
    basic,
    free_port,
    init_idhub,
    run_wrk,
    serve,
    server_cpu_seconds,
    write_post_script,
)
from sqlalchemy import create_engine, func, select


def audit_count(url: str) -> int:
    from idhub.adapters.db import audit_events

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idhub-bench-flood-") as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'var' / 'idhub.db'}"
        (root / "var").mkdir()
        config, env = init_idhub(root, url)
        script = write_post_script(
            root / "token.lua", "grant_type=client_credentials", basic("nobody", "wrong")
        )
        port = opts.port or free_port()
        cpu_per_request: list[float] = []
        events_per_1000: list[float] = []
        rates: list[float] = []
        errors = 0
        with serve(config, env, port) as proc:
            for _ in range(opts.runs):
                before_events, before_cpu = audit_count(url), server_cpu_seconds(proc.pid)
                result = run_wrk(
                    f"http://127.0.0.1:{port}/token",
                    duration=opts.duration,
                    connections=opts.connections,
                    script=script,
                )
                cpu = server_cpu_seconds(proc.pid) - before_cpu
                written = audit_count(url) - before_events
                requests = max(1.0, result["requests"])
                cpu_per_request.append(cpu / requests * 1e6)
                events_per_1000.append(written / requests * 1000)
                rates.append(result["rate"])
                # Every answer is the 401 the protocol requires, so wrk's non-2xx count is the
                # request count; anything else shows as socket errors.
                errors += int(result["errors"] - result["requests"]) if result["errors"] else 0
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(
            f"/token invalid_client flood, {opts.runs} x {opts.duration}s, "
            f"{opts.connections} connections, load average {' '.join(load)}"
        )
        print(
            f"server CPU {statistics.median(cpu_per_request):.0f} µs/req, "
            f"{statistics.median(rates):.0f} req/s, "
            f"audit events {statistics.median(events_per_1000):.1f} per 1,000 requests "
            f"(runs {', '.join(f'{e:.1f}' for e in events_per_1000)}), other errors {errors}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
