"""Browser-side throughput: `idhub serve --workers 2` on SQLite, loaded by a bounded Python
load generator (threads with httpx) on 127.0.0.1.

Scenarios:
  sign-in         GET /login + POST /login (CSRF, argon2id OWASP params, session row, audit)
  sso-authorize   GET /authorize with a live SSO session -> 302 with a code (code row,
                  session_clients, no login page): what every "second system" costs
  login-page      GET /login (template render, CSRF token)

Each scenario runs RUNS times for DURATION seconds with CONNECTIONS threads; the table shows
the median run's rate and latency percentiles and all non-expected answers over all runs.
Everything lives in a temporary directory that is removed afterwards.

    .venv/bin/python bench/bench_login.py [--duration 5] [--runs 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    config = workdir / "idhub.toml"
    config.write_text(
        f'var_dir = "{workdir / "var"}"\n[server]\nissuer = "http://127.0.0.1:{port}"\n'
        f'[policy]\nwatch = false\ndir = "{Path(__file__).resolve().parents[1] / "policies"}"\n',
        encoding="utf-8",
    )
    idhub = str(VENV_BIN / "idhub")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    init = subprocess.run(
        [idhub, "-c", str(config), "init", "--demo"], capture_output=True, text=True, env=env,
        check=True, timeout=120,
    )  # fmt: skip
    password = re.search(r"demo user alice .*: password (\S+)", init.stdout)
    assert password, init.stdout
    proc = subprocess.Popen(
        [idhub, "-c", str(config), "serve", "--workers", "2", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
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


def run_load(
    make_step: Callable[[], Callable[[], bool]], *, connections: int, duration: float
) -> tuple[float, list[float], int]:
    """Each thread builds its own step (its own browser) and calls it until time is up."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + duration
    steps = [make_step() for _ in range(connections)]
    barrier = threading.Barrier(connections + 1)

    def worker(step: Callable[[], bool]) -> None:
        nonlocal errors
        mine: list[float] = []
        bad = 0
        barrier.wait()
        while time.monotonic() < stop:
            started = time.perf_counter()
            ok = step()
            mine.append(time.perf_counter() - started)
            bad += 0 if ok else 1
        with lock:
            latencies.extend(mine)
            errors += bad

    threads = [threading.Thread(target=worker, args=(s,)) for s in steps]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    return len(latencies) / elapsed, latencies, errors


def scenarios(url: str, password: str) -> dict[str, Callable[[], Callable[[], bool]]]:
    authorize = (
        f"{url}/authorize?client_id=oa&response_type=code&scope=openid"
        "&redirect_uri=http%3A%2F%2F127.0.0.1%3A8001%2Fcallback&state=s"
        "&code_challenge=E9Melhoe2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
    )

    def sign_in() -> Callable[[], bool]:
        browser = httpx.Client(base_url=url, timeout=30)

        def step() -> bool:
            page = browser.get("/login")
            found = CSRF.search(page.text)
            if not found:
                return False
            form = {"csrf_token": found.group(1), "return_to": "", "username": "alice",
                    "password": password}  # fmt: skip
            done = browser.post("/login", data=form)
            return done.status_code == 200

        return step

    def sso() -> Callable[[], bool]:
        browser = httpx.Client(base_url=url, timeout=30)
        page = browser.get("/login")
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        browser.post("/login", data={"csrf_token": token, "return_to": "", "username": "alice",
                                     "password": password})  # fmt: skip

        def step() -> bool:
            response = browser.get(authorize)
            return response.status_code == 302 and "code=" in response.headers["location"]

        return step

    def login_page() -> Callable[[], bool]:
        browser = httpx.Client(base_url=url, timeout=30)
        return lambda: browser.get("/login").status_code == 200

    return {"sign-in": sign_in, "sso-authorize": sso, "login-page": login_page}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="idhub-bench-login-"))
    rows = []
    try:
        with server(workdir) as (url, password):
            for name, make_step in scenarios(url, password).items():
                runs = []
                errors = 0
                for _ in range(args.runs):
                    rate, latencies, bad = run_load(
                        make_step, connections=args.connections, duration=args.duration
                    )
                    runs.append((rate, latencies))
                    errors += bad
                runs.sort(key=lambda item: item[0])
                rate, latencies = runs[len(runs) // 2]
                latencies.sort()
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
                rows.append((name, rate, p50, p99, errors))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"idhub serve --workers 2, SQLite; {args.connections} client threads, "
          f"{args.runs} runs x {args.duration:.0f}s, median run")  # fmt: skip
    print(f"{'scenario':<15} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, rate, p50, p99, errors in rows:
        print(f"{name:<15} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f} {errors:>7}")
    return 0 if all(row[4] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
