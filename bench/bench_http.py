"""The HTTP layer alone: a bare ASGI app served with `idhub serve`'s uvicorn configuration
(web/http_server.py), answered a fixed number of requests by a client in another process, so
that the server's instructions per request can be counted under valgrind (start-up cancels
between two request counts) or its CPU read from /proc.

    python bench/bench_http.py --requests 3000 [--connections 8] [--callgrind OUT]
        [--app bare|introspect|token --work DIR] [--wrk SECONDS] [--port PORT]

The server exits after exactly `--requests` answers (uvicorn's `limit_max_requests`); the
client sends exactly that many POSTs (a 41-byte urlencoded body, the head wrk sends for
`/token`) over `--connections` keep-alive connections, one request at a time on each. Prints
the server's CPU µs per request (utime + stime over the whole run, start-up included: use the
difference between two counts) and, with `--callgrind OUT`, runs the server under
`valgrind --tool=callgrind` and prints its instruction total (Ir). `--app introspect` serves
idhub's whole app instead (bench/bench_asgi.py's database in `--work`, made on first use) and
sends `/introspect` requests of an ES256 access token by its client (`--app token`:
client-credentials `/token` requests, ES256, each audited). `--wrk SECONDS` loads
the server with `wrk -t1 -c32` for that long instead (the same request) and prints its CPU
per answered request from /proc, start-up excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BODY = b"grant_type=client_credentials&scope=authz"
REQUEST = (
    b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Basic YmVuY2gtZXM6c2VjcmV0LXNlY3JldC1zZWNyZXQ=\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
ANSWER = b'{"access_token":"x","token_type":"Bearer","expires_in":300}'


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and answers a small JSON document, as a token endpoint does."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(ANSWER)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def idhub_app(work: Path) -> Any:
    """idhub's app on bench/bench_asgi.py's database, as `idhub serve` builds it."""
    sys.path.insert(0, str(HERE))
    from bench_asgi import prepare

    data = prepare(work)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="idhub-bench-http-")
    from idhub.bootstrap import Services
    from idhub.config import load_settings
    from idhub.web.app import create_app

    return create_app(Services(load_settings(Path(data["config"]), env=dict(os.environ))))


def idhub_request(work: Path, app_name: str) -> bytes:
    """`/introspect` of the access token, or a client-credentials `/token`, by its client."""
    sys.path.insert(0, str(HERE))
    from bench_asgi import prepare

    data = prepare(work)
    body = f"token={data['access']}".encode() if app_name == "introspect" else BODY
    path = b"/introspect" if app_name == "introspect" else b"/token"
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: " + data["auth"].encode() + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def serve(port: int, requests: int, app_name: str, work: Path | None) -> None:
    import uvicorn

    from idhub.config import LimitsSettings
    from idhub.web.http_server import server_config

    app = bare_app if app_name == "bare" or work is None else idhub_app(work)
    # As `idhub serve` runs it: uvicorn's proxy-header middleware off (web/proxies.py decides).
    config = server_config(
        app,
        limits=LimitsSettings(),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        proxy_headers=False,
    )
    config.limit_max_requests = requests
    uvicorn.Server(config).run()


async def _client(port: int, requests: int, connections: int, request: bytes = REQUEST) -> None:
    share = [requests // connections + (i < requests % connections) for i in range(connections)]

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = re.search(rb"content-length: (\d+)", head, re.I)
            assert length is not None
            await reader.readexactly(int(length.group(1)))
        writer.close()

    await asyncio.gather(*(one(n) for n in share if n))


def _wait_listening(port: int, bound: float) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def _load(pid: int, port: int, seconds: int, request: bytes) -> int:
    """wrk -t1 -c32 for `seconds` (after a one-second warm-up); the server's CPU per answer."""
    sys.path.insert(0, str(HERE))
    from bench_oidc import run_wrk, server_cpu_seconds, write_post_script

    head, _, body = request.partition(b"\r\n\r\n")
    auth = re.search(rb"Authorization: ([^\r\n]*)", head)
    path = head.split(b" ")[1].decode()
    with tempfile.TemporaryDirectory() as tmp:
        script = write_post_script(
            Path(tmp) / "post.lua", body.decode(), auth.group(1).decode() if auth else ""
        )
        url = f"http://127.0.0.1:{port}{path}"
        run_wrk(url, duration=1, connections=32, script=script)
        before = server_cpu_seconds(pid)
        result = run_wrk(url, duration=seconds, connections=32, script=script)
        cpu = server_cpu_seconds(pid) - before
    print(
        f"wrk {result['requests']:.0f} requests, {result['rate']:.0f}/s, errors "
        f"{result['errors']:.0f}; server cpu {cpu / result['requests'] * 1e6:.1f} us/request"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--callgrind", default=None)
    parser.add_argument("--app", choices=("bare", "introspect", "token"), default="bare")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--wrk", type=int, default=0)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help="server port (default: any free)")
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve, opts.requests, opts.app, opts.work)
        return 0
    request = REQUEST
    if opts.app != "bare":
        opts.work = opts.work or Path(tempfile.mkdtemp(prefix="idhub-bench-http-"))
        opts.work.mkdir(parents=True, exist_ok=True)
        request = idhub_request(opts.work, opts.app)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", opts.port))
        port = int(sock.getsockname()[1])
    command = [sys.executable, __file__, "--serve", str(port), "--requests", str(opts.requests)]
    command += ["--app", opts.app] + (["--work", str(opts.work)] if opts.work else [])
    if opts.callgrind:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={opts.callgrind}",
            *command,
        ]
    if opts.wrk:
        command[command.index("--requests") + 1] = str(10**9)
    started = time.monotonic()
    server = subprocess.Popen(command, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        # The probe connection counts no request: it sends nothing.
        _wait_listening(port, 120)
        if opts.wrk:
            return _load(server.pid, port, opts.wrk, request)
        asyncio.run(_client(port, opts.requests, opts.connections, request))
        _, err = server.communicate(timeout=600)
    finally:
        if server.poll() is None:
            server.kill()
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = child.ru_utime + child.ru_stime
    print(f"requests {opts.requests}  wall {time.monotonic() - started:.1f}s")
    print(f"server cpu {cpu:.3f}s  ({cpu / opts.requests * 1e6:.1f} us/request, start-up included)")
    if opts.callgrind:
        found = re.findall(rb"Collected : (\d+)", err)
        if found:
            print(f"Ir {int(found[-1])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
