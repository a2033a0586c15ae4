"""idhub's whole ASGI app driven in process, without sockets: CPU and instructions per request
of the web layer and what it calls, for `/token` (client credentials, ES256), `/introspect`
and `/healthz`.

Each request goes in as uvicorn's httptools protocol hands it over (the scope with the head
wrk sends, one `http.request` message with the body) and its answer is collected and checked
(status 200). Client-credentials requests go `--concurrency` at a time (default 8), so the
token endpoint's batcher (web/batching.py) hands them to its threads in batches as it does
under `wrk -c32`; the others go one at a time, as an inline endpoint answers them anyway.
Metrics are kept in prometheus-client's multi-process files (`PROMETHEUS_MULTIPROC_DIR` in a
temporary directory), as under `idhub serve --workers 2`.

    python bench/bench_asgi.py --scenario cc --requests 2000 [--work DIR]

prints CPU µs per request (process time, all threads) for the timed requests. For a
load-independent figure run it under `valgrind --tool=callgrind` at two request counts and
divide the difference of the instruction totals by the difference of the counts (start-up,
imports and warm-up cancel):

    valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out python bench/bench_asgi.py \
        --scenario cc --requests 1200 --warm 200 --work /tmp/asgi-work

`--work` keeps the initialised database between runs (made on first use). With `--database
postgresql` it is a database on the local server (127.0.0.1:5432, user postgres) named after
the work directory, kept with it; `--drop` removes it at the end. Only idhub's process is
measured: the server's backends are other processes (callgrind does not follow them).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CC_BODY = b"grant_type=client_credentials&scope=authz"


def pg_name(work: Path) -> str:
    """The PostgreSQL database kept for `work`."""
    return "idhub_bench_asgi_" + hashlib.sha256(str(work.resolve()).encode()).hexdigest()[:12]


def pg_admin(statement: str) -> None:
    sys.path.insert(0, str(HERE))
    from bench_oidc import PG_SERVER
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def prepare(work: Path, database: str = "sqlite") -> dict[str, Any]:
    """The config, the client's Basic header and an access token, made once per `work`."""
    saved = work / ("bench_asgi.json" if database == "sqlite" else f"bench_asgi_{database}.json")
    if saved.exists():
        data: dict[str, Any] = json.loads(saved.read_text(encoding="utf-8"))
        return data
    sys.path.insert(0, str(HERE))
    from bench_oidc import PG_SERVER, basic, init_idhub

    if database == "sqlite":
        url = f"sqlite:///{work / 'var' / 'idhub.db'}"
    else:
        pg_admin(f'DROP DATABASE IF EXISTS "{pg_name(work)}" WITH (FORCE)')
        pg_admin(f'CREATE DATABASE "{pg_name(work)}"')
        url = f"{PG_SERVER}/{pg_name(work)}"
        work = work / database
        work.mkdir(exist_ok=True)
    config, _ = init_idhub(work, url)
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    services = Services(load_settings(config, env={}))
    _, secret = services.clients.register(
        "bench-es",
        grant_types=["client_credentials"],
        scope="authz",
        access_token_alg="ES256",
        default_audience="reimburse",
        allowed_audiences=["reimburse"],
    )
    assert secret
    client = services.clients.get("bench-es")
    assert client is not None
    access, _ = services.access_tokens.issue(
        client, sub="bench-es", audience="reimburse", scopes=["authz"], ttl=24 * 3600
    )
    services.close()
    data = {"config": str(config), "auth": basic("bench-es", secret), "access": access}
    saved.write_text(json.dumps(data), encoding="utf-8")
    return data


def scope_for(path: str, auth: str | None, body: bytes) -> dict[str, Any]:
    """What uvicorn's httptools protocol builds for wrk's request."""
    headers = [(b"host", b"127.0.0.1:18400")]
    method = "GET"
    if auth is not None:
        method = "POST"
        headers += [
            (b"authorization", auth.encode()),
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 18400),
        "client": ("127.0.0.1", 51000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "state": {},
    }


async def one(app: Any, template: dict[str, Any], body: bytes) -> int:
    scope = dict(template)
    scope["state"] = {}
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a disconnect would come only after the answer
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app: Any, opts: argparse.Namespace, data: dict[str, Any]) -> float:
    if opts.scenario == "cc":
        template, body = scope_for("/token", data["auth"], CC_BODY), CC_BODY
        width = opts.concurrency
    elif opts.scenario == "introspection":
        body = f"token={data['access']}".encode()
        template, width = scope_for("/introspect", data["auth"], body), 1
    else:
        template, body, width = scope_for("/healthz", None, b""), b"", 1

    async def block(count: int) -> None:
        done = 0
        while done < count:
            n = min(width, count - done)
            if n == 1:
                statuses = [await one(app, template, body)]
            else:
                statuses = await asyncio.gather(*(one(app, template, body) for _ in range(n)))
            if any(s != 200 for s in statuses):
                raise RuntimeError(f"answered {statuses}")
            done += n

    await block(opts.warm)
    started = time.process_time()
    await block(opts.requests - opts.warm)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=("cc", "introspection", "healthz"), default="cc")
    parser.add_argument("--requests", type=int, default=2000, help="in all, warm-up included")
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--drop", action="store_true", help="PostgreSQL: drop the database after")
    opts = parser.parse_args()
    work = opts.work or Path(tempfile.mkdtemp(prefix="idhub-bench-asgi-"))
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(work, opts.database)
    # As `idhub serve --workers 2` does, before prometheus-client is imported.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="idhub-bench-asgi-metrics-")
    import uvloop

    from idhub.bootstrap import Services
    from idhub.config import load_settings
    from idhub.web.app import create_app

    services = Services(load_settings(Path(data["config"]), env=dict(os.environ)))
    app = create_app(services)
    try:
        seconds = uvloop.run(drive(app, opts, data))
    finally:
        services.close()
        if opts.database == "postgresql" and (opts.drop or opts.work is None):
            pg_admin(f'DROP DATABASE IF EXISTS "{pg_name(work)}" WITH (FORCE)')
    timed = opts.requests - opts.warm
    print(f"{opts.scenario}: {timed} requests, {seconds / timed * 1e6:.1f} µs CPU per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
