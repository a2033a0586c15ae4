"""CAS throughput: `idhub serve --workers 2` on SQLite, loaded from 127.0.0.1 by threads with httpx.

Phases (each bounded by --count tickets and --max-seconds):
  ticket-issue     GET /cas/login?service=... with a live SSO session -> 302 with an ST
                   (ticket row, participant row, audit event)
  serviceValidate  GET /cas/p3/serviceValidate for each of those tickets (atomic consume,
                   session and user lookups, attributes with roles, audit event)

The goal is serviceValidate >= 1,000/s. Everything lives in a temporary directory that is
removed afterwards.

    .venv/bin/python bench/bench_cas.py [--count 3000] [--connections 8] [--max-seconds 30]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SERVICE = "http://127.0.0.1:9/app/"
GOAL = 1000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def idhub(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    return subprocess.run(
        [sys.executable, "-m", "idhub", "-c", str(config), *args],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    )  # fmt: skip


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    config = workdir / "idhub.toml"
    config.write_text(
        f'var_dir = "{workdir / "var"}"\n[server]\nissuer = "http://127.0.0.1:{port}"\n'
        f'[policy]\nwatch = false\ndir = "{Path(__file__).resolve().parents[1] / "policies"}"\n'
        # Tickets are issued first and validated afterwards, so they must outlive the phase.
        "[cas]\nticket_ttl = 600\n",
        encoding="utf-8",
    )
    init = idhub(config, "init", "--demo")
    password = re.search(r"demo user alice .*: password (\S+)", init.stdout)
    assert password, init.stdout
    idhub(config, "cas", "service", "add", "oa", "--url", SERVICE, "--first-party")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "serve", "--workers", "2",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("idhub did not start")
            time.sleep(0.2)
        yield url, password.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def signed_in(url: str, password: str) -> httpx.Client:
    browser = httpx.Client(base_url=url, timeout=30)
    token = CSRF.search(browser.get("/login").text).group(1)  # type: ignore[union-attr]
    form = {"csrf_token": token, "return_to": "", "username": "alice", "password": password}
    browser.post("/login", data=form)
    return browser


def run(
    work: Callable[[httpx.Client, int], bool],
    clients: list[httpx.Client],
    *,
    count: int,
    max_seconds: float,
) -> tuple[int, float, int]:
    """Calls `work(client, i)` for i < count over the clients' threads, stopping at
    max_seconds; returns (done, seconds, errors)."""
    next_index = iter(range(count))
    lock = threading.Lock()
    done = errors = 0
    stop = time.monotonic() + max_seconds

    def worker(client: httpx.Client) -> None:
        nonlocal done, errors
        while time.monotonic() < stop:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            ok = work(client, i)
            with lock:
                done += 1
                errors += 0 if ok else 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, time.monotonic() - began, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="idhub-bench-cas-"))
    tickets: list[str | None] = [None] * args.count
    rows = []
    try:
        with server(workdir) as (url, password):
            browsers = [signed_in(url, password) for _ in range(args.connections)]

            def issue(browser: httpx.Client, i: int) -> bool:
                response = browser.get("/cas/login", params={"service": SERVICE})
                found = parse_qs(urlsplit(response.headers.get("location", "")).query)
                tickets[i] = found.get("ticket", [None])[0]
                return response.status_code == 302 and tickets[i] is not None

            rows.append(("ticket-issue", *run(issue, browsers, count=args.count,
                                              max_seconds=args.max_seconds)))  # fmt: skip
            issued = [t for t in tickets if t]
            checkers = [httpx.Client(base_url=url, timeout=30) for _ in range(args.connections)]

            def validate(client: httpx.Client, i: int) -> bool:
                response = client.get(
                    "/cas/p3/serviceValidate", params={"ticket": issued[i], "service": SERVICE}
                )
                return b"<cas:user>alice</cas:user>" in response.content

            rows.append(("serviceValidate", *run(validate, checkers, count=len(issued),
                                                 max_seconds=args.max_seconds)))  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"idhub serve --workers 2, SQLite; {args.connections} client threads, "
          f"up to {args.count} tickets, loopback")  # fmt: skip
    print(f"{'phase':<16} {'done':>6} {'req/s':>8} {'errors':>7}")
    for name, done, seconds, errors in rows:
        print(f"{name:<16} {done:>6} {done / seconds:>8.0f} {errors:>7}")
    validate_rate = rows[-1][1] / rows[-1][2]
    print(f"serviceValidate goal {GOAL:.0f}/s: {'met' if validate_rate >= GOAL else 'NOT met'}")
    return 0 if all(row[3] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
