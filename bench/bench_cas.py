"""CAS throughput: `idhub serve --workers 2` on SQLite, loaded by wrk on 127.0.0.1.

Phases, each RUNS times for DURATION seconds (the table shows the median run):
  ticket-issue     GET /cas/login?service=... with a live SSO session -> 302 with an ST
                   (ticket row, participant row, audit event); the tickets are kept for:
  serviceValidate  GET /cas/p3/serviceValidate, each ticket once (atomic consume, session and
                   user lookups, attributes with groups and roles, audit event); the tickets
                   are issued beforehand by this script straight into the database (the
                   same `CasTickets.issue` as /cas/login, for the same session), enough that
                   no run can exhaust them
  healthz          the cheapest route of the same app, same run: what the machine allows

Besides requests per second, the server's CPU time per request (from /proc of the server and
its workers, before and after each run) is printed: steadier than rates on a shared machine.
The goal is serviceValidate >= 1,000/s. Everything lives in a temporary directory that is
removed afterwards; traffic goes only to 127.0.0.1.

    .venv/bin/python bench/bench_cas.py [--duration 4] [--runs 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_oidc import _ms, free_port, server_cpu_seconds

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SERVICE = "http://127.0.0.1:9/app/"
GOAL = 1000.0
# Tickets pre-issued per second of a validation run: more than it can validate here.
MAX_RATE = 3000

ISSUE_LUA = """
local out
function init(args) out = io.open(args[1], "a") end
function request()
  return wrk.format("GET", "/cas/login?service=%(service)s", {["Cookie"] = "%(cookie)s"})
end
function response(status, headers, body)
  local location = headers["Location"] or headers["location"] or ""
  local ticket = string.match(location, "ticket=(ST%%-[%%w%%-_]+)")
  if ticket then out:write(ticket, "\\n") end
end
"""

VALIDATE_LUA = """
local tickets, i = {}, 0
failed = 0
function init(args)
  local first, last = tonumber(args[2]), tonumber(args[3])
  local n = 0
  for line in io.lines(args[1]) do
    n = n + 1
    if n > first and n <= last then tickets[#tickets + 1] = line end
  end
end
function request()
  i = i + 1
  return wrk.format("GET", "/cas/p3/serviceValidate?service=%(service)s&ticket="
    .. (tickets[i] or "ST-none"))
end
function response(status, headers, body)
  if not string.find(body, "<cas:user>alice</cas:user>", 1, true) then failed = failed + 1 end
end
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + (thread:get("failed") or 0) end
  io.write(string.format("failed validations: %%d\\n", total))
end
"""


def idhub(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    return subprocess.run(
        [sys.executable, "-m", "idhub", "-c", str(config), *args],
        capture_output=True, text=True, env=env, check=True, timeout=120,
    )  # fmt: skip


@contextlib.contextmanager
def server(workdir: Path, database_url: str = "") -> Iterator[tuple[str, str, int]]:
    """(url, alice's password, server pid)."""
    port = free_port()
    config = workdir / "idhub.toml"
    database = f'[database]\nurl = "{database_url}"\n' if database_url else ""
    config.write_text(
        f'var_dir = "{workdir / "var"}"\n[server]\nissuer = "http://127.0.0.1:{port}"\n'
        f'[policy]\nwatch = false\ndir = "{Path(__file__).resolve().parents[1] / "policies"}"\n'
        # Tickets are issued in one phase and validated in the next: they must outlive it.
        "[cas]\nticket_ttl = 900\n" + database,
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
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("idhub did not start")
            time.sleep(0.2)
        time.sleep(1.5)  # let both workers finish starting
        yield url, password.group(1), proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def session_cookie(url: str, password: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as browser:
        token = CSRF.search(browser.get("/login").text).group(1)  # type: ignore[union-attr]
        form = {"csrf_token": token, "return_to": "", "username": "alice", "password": password}
        browser.post("/login", data=form)
        return "; ".join(f"{k}={v}" for k, v in browser.cookies.items())


@contextlib.contextmanager
def direct_issuer(workdir: Path, url: str, cookie: str) -> Iterator[Callable[[int], list[str]]]:
    """Issues service tickets for alice's browser session straight into the server's database
    (through the same `CasTickets.issue` as /cas/login): HTTP issuance is slower than
    validation, so a validation run would otherwise run out of tickets."""
    from idhub.bootstrap import Services
    from idhub.cas.services import parse_service_url
    from idhub.cas.tickets import TicketKind
    from idhub.config import load_settings
    from idhub.core.crypto import sha256_hex

    with httpx.Client(base_url=url, headers={"Cookie": cookie}) as browser:
        location = browser.get("/cas/login", params={"service": SERVICE}).headers["location"]
    first = parse_qs(urlsplit(location).query)["ticket"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    services = Services(load_settings(workdir / "idhub.toml", env=env, cwd=workdir))
    record = services.cas_tickets.get(sha256_hex(first))
    assert record is not None and record.sid is not None
    normalized = parse_service_url(SERVICE)
    assert normalized is not None

    def issue(count: int) -> list[str]:
        return [
            services.cas_tickets.issue(
                TicketKind.SERVICE,
                service_name="oa",
                service_url=normalized.normalized,
                sid=record.sid,
                user_id=record.user_id,
                now=time.time(),
            )
            for _ in range(count)
        ]

    try:
        yield issue
    finally:
        services.close()


def run_wrk(
    pid: int,
    url: str,
    *,
    duration: int,
    connections: int,
    script: Path | None = None,
    args: tuple[str, ...] = (),
) -> dict[str, float]:
    """One wrk run; rate, latencies, errors (non-2xx/3xx, socket errors, failed validations)
    and the server's CPU microseconds per request."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    before = server_cpu_seconds(pid)
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    cpu = server_cpu_seconds(pid) - before

    def number(pattern: str) -> str:
        found = re.search(pattern, out)
        assert found, f"no {pattern!r} in wrk's output: {out}"
        return found.group(1)

    errors = sum(
        int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|failed validations):\s+(\d+)", out)
    )
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    requests = int(number(r"(\d+) requests in"))
    return {
        "rate": float(number(r"Requests/sec:\s+([\d.]+)")),
        "p50": _ms(number(r"\s50%\s+(\S+)")),
        "p99": _ms(number(r"\s99%\s+(\S+)")),
        "errors": errors,
        "requests": requests,
        "cpu_us": cpu / max(requests, 1) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--database-url", default="",
        help="an empty PostgreSQL database on 127.0.0.1 to use instead of SQLite",
    )  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed (Debian package `wrk`; make bench installs it)", file=sys.stderr
        )
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="idhub-bench-cas-"))
    results: dict[str, list[dict[str, float]]] = {"ticket-issue": [], "serviceValidate": []}
    results["healthz"] = []
    errors = 0
    try:
        with server(workdir, args.database_url) as (url, password, pid):
            cookie = session_cookie(url, password)
            issue = workdir / "issue.lua"
            issue.write_text(ISSUE_LUA % {"service": SERVICE, "cookie": cookie}, "utf-8")
            validate = workdir / "validate.lua"
            validate.write_text(VALIDATE_LUA % {"service": SERVICE}, "utf-8")
            issued_file = workdir / "issued.txt"
            tickets = workdir / "tickets.txt"
            common = {"duration": args.duration, "connections": args.connections}
            with direct_issuer(workdir, url, cookie) as issue_direct:
                for _ in range(args.runs):
                    issued_file.write_text("", "utf-8")
                    run = run_wrk(pid, url, script=issue, args=(str(issued_file),), **common)
                    results["ticket-issue"].append(run)
                    count = len(issued_file.read_text("utf-8").split())
                    errors += int(run["requests"]) - count + int(run["errors"])
                    wanted = args.duration * MAX_RATE
                    tickets.write_text("\n".join(issue_direct(wanted + 100)) + "\n", "utf-8")
                    # The first 100 warm both workers (and check the tickets work at all).
                    with httpx.Client(base_url=url) as warm:
                        for ticket in tickets.read_text("utf-8").split()[:100]:
                            query = {"ticket": ticket, "service": SERVICE}
                            answer = warm.get("/cas/p3/serviceValidate", params=query)
                            assert "<cas:user>alice</cas:user>" in answer.text, answer.text
                    window = (str(tickets), "100", str(wanted + 100))
                    run = run_wrk(pid, url, script=validate, args=window, **common)
                    errors += int(run["errors"])
                    results["serviceValidate"].append(run)
                    results["healthz"].append(run_wrk(pid, url + "/healthz", **common))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"idhub serve --workers 2, {backend}; wrk -t1 -c{args.connections}, {args.runs} runs of "
          f"{args.duration}s (median run); load average {load}")  # fmt: skip
    print(f"{'phase':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us/req':>18}")
    for name, runs in results.items():
        middle = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
        cpu = statistics.median(r["cpu_us"] for r in runs)
        print(f"{name:<16} {middle['rate']:>8.0f} {middle['p50']:>8.2f} {middle['p99']:>8.2f} "
              f"{cpu:>18.0f}")  # fmt: skip
    rates = ", ".join(f"{r['rate']:.0f}" for r in results["serviceValidate"])
    print(f"serviceValidate runs: {rates}; errors (non-200, missing tickets, failed validations) "
          f"{errors}")  # fmt: skip
    best = statistics.median(r["rate"] for r in results["serviceValidate"])
    print(f"serviceValidate goal {GOAL:.0f}/s: {'met' if best >= GOAL else 'NOT met'}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
