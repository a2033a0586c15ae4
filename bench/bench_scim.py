"""SCIM provisioning throughput: `POST /scim/v2/Users` against `idhub serve --workers 2` on
SQLite, loaded by wrk on 127.0.0.1 (each request a new user with the enterprise extension:
the ownership and uniqueness checks, the user row, its department, the `sync.change` audit
event in the same transaction, and the created resource rendered back).

Phases, each RUNS times for DURATION seconds (the table shows the median run):
  POST /Users   a new user per request (wrk counts non-201 answers as errors)
  GET /Users/id one user read back by id (the read path of PATCH/PUT is this one)
  userName eq   GET /Users?filter=userName eq "reader": what Entra ID and Okta ask before
                each create, with the thousands of users the POST phase made
  healthz       the cheapest route of the same app, same run: what the machine allows

Besides requests per second, the server's CPU time per request (from /proc of the server and
its workers) is printed. The goal is POST /Users >= 200/s sustained. Everything lives in a
temporary directory that is removed afterwards; traffic goes only to 127.0.0.1.

    .venv/bin/python bench/bench_scim.py [--duration 4] [--runs 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cas import run_wrk
from bench_oidc import free_port

GOAL = 200.0
TOKEN = secrets.token_urlsafe(32)
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"

POST_LUA = """
local n = 0
local prefix = "u"
function init(args) prefix = args[1] end
function request()
  n = n + 1
  local name = prefix .. "-" .. n
  local body = '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User",'
    .. '"%(enterprise)s"],"userName":"' .. name .. '",'
    .. '"name":{"givenName":"Bench","familyName":"' .. n .. '"},'
    .. '"emails":[{"value":"' .. name .. '@corp.example","type":"work","primary":true}],'
    .. '"%(enterprise)s":{"employeeNumber":"' .. name .. '","department":"Bench"}}'
  return wrk.format("POST", "/scim/v2/Users", {
    ["Authorization"] = "Bearer %(token)s",
    ["Content-Type"] = "application/scim+json"}, body)
end
failed = 0
function response(status) if status ~= 201 then failed = failed + 1 end end
function done() io.write(string.format("failed validations: %%d\\n", failed)) end
"""

GET_LUA = """
function request()
  return wrk.format("GET", "/scim/v2/Users/%(ident)s", {["Authorization"] = "Bearer %(token)s"})
end
"""

FILTER_LUA = """
function request()
  return wrk.format("GET", "/scim/v2/Users?filter=userName%%20eq%%20%%22reader%%22",
    {["Authorization"] = "Bearer %(token)s"})
end
"""


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = workdir / "idhub.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config.write_text(
        f'var_dir = "{workdir / "var"}"\n[server]\nissuer = "http://127.0.0.1:{port}"\n'
        f'[policy]\nwatch = false\ndir = "{Path(__file__).resolve().parents[1] / "policies"}"\n'
        f'[directory.scim.bench]\ntoken_sha256 = "{digest}"\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    subprocess.run(
        [sys.executable, "-m", "idhub", "-c", str(config), "init"],
        capture_output=True, env=env, check=True, timeout=120,
    )  # fmt: skip
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
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="idhub-bench-scim-"))
    try:
        with server(workdir) as (url, pid):
            post = workdir / "post.lua"
            post.write_text(POST_LUA % {"token": TOKEN, "enterprise": ENTERPRISE})
            headers = {"Authorization": f"Bearer {TOKEN}"}
            made = httpx.post(
                f"{url}/scim/v2/Users", json={"userName": "reader"}, headers=headers, timeout=10
            )
            made.raise_for_status()
            get = workdir / "get.lua"
            get.write_text(GET_LUA % {"token": TOKEN, "ident": made.json()["id"]})
            lookup = workdir / "filter.lua"
            lookup.write_text(FILTER_LUA % {"token": TOKEN})
            phases = [
                ("POST /Users", post),
                ("GET /Users/id", get),
                ("userName eq", lookup),
                ("healthz", None),
            ]
            results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in phases}
            for run in range(args.runs):
                for name, script in phases:
                    target = f"{url}/healthz" if script is None else url
                    extra = (f"r{run}-{secrets.token_hex(3)}",) if script is post else ()
                    results[name].append(
                        run_wrk(
                            pid,
                            target,
                            duration=args.duration,
                            connections=args.connections,
                            script=script,
                            args=extra,
                        )
                    )
            load = os.getloadavg()
            count = httpx.get(
                f"{url}/scim/v2/Users", params={"count": 0}, headers=headers, timeout=60
            ).json()["totalResults"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nSCIM, idhub serve --workers 2, SQLite, wrk -t1 -c{args.connections}, "
          f"{args.runs} x {args.duration}s (median run); load average {load[0]:.1f}")  # fmt: skip
    print(f"{'phase':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}{'errors':>8}")
    healthz = statistics.median(r["rate"] for r in results["healthz"])
    for name, _ in phases:
        runs = sorted(results[name], key=lambda r: r["rate"])
        mid = runs[len(runs) // 2]
        print(
            f"{name:<16}{mid['rate']:>10.0f}{mid['p50']:>9.1f}{mid['p99']:>9.1f}"
            f"{statistics.median(r['cpu_us'] for r in runs):>12.0f}"
            f"{sum(r['errors'] for r in runs):>8.0f}"
        )
    posted = statistics.median(r["rate"] for r in results["POST /Users"])
    print(f"users held by the source afterwards: {count}; POST/healthz ratio "
          f"{posted / healthz:.3f}")  # fmt: skip
    ok = posted >= GOAL and not sum(r["errors"] for r in results["POST /Users"])
    print(f"goal POST /Users >= {GOAL:.0f}/s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
