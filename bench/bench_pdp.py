"""The HTTP floor and single decisions over HTTP, with a bare Starlette app as the baseline.

Three kinds of `wrk -t1 -c32` runs, interleaved in every round so each round sees the same
load on this shared box:

  bare     a hello-world Starlette `/healthz` on uvicorn, 2 workers, the same httptools
           parser and the same access-log setting as `idhub serve`: what the framework costs
  healthz  idhub's `/healthz` through its whole middleware stack (`idhub serve --workers 2`)
  check    one authorization question per request (`/api/v1/authz/check`), 90% allows,
           a real client-credentials token (every denial is written to the audit trail)

The server CPU per request comes from /proc (user + system time of the worker processes
before and after each run), which stays comparable on a busy box; req/s does not. The company
is bench_authz's `--quick` one (kept in `--work` for re-runs).

Usage: python bench/bench_pdp.py [--runs 3] [--seconds 5] [--work DIR] [--port N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench_authz

HERE = Path(__file__).resolve().parent


def bare_app() -> Any:
    """The baseline: one Starlette route answering what idhub's `/healthz` answers."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/healthz", healthz)])


@contextlib.contextmanager
def bare_serving(port: int) -> Iterator[subprocess.Popen[bytes]]:
    import httpx

    cmd = [sys.executable, "-m", "uvicorn", "--factory", "bench_pdp:bare_app"]
    cmd += ["--workers", "2", "--http", "httptools", "--no-server-header", "--log-level"]
    cmd += ["warning", "--host", "127.0.0.1", "--port", str(port)]
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    # To a file: an unread pipe fills after 64 KiB and then blocks every worker that logs.
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"the bare app did not start: {tail}")
                time.sleep(0.3)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def wrk(url: str, pids: list[int], seconds: int, extra: list[str]) -> tuple[float, float]:
    """(requests per second, server CPU µs per request) of one bounded wrk run."""
    cmd = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", *extra, url]
    before = bench_authz.cpu_s(pids)
    text = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    spent = bench_authz.cpu_s(pids) - before
    count = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if failed:
        raise RuntimeError(f"{url}: {failed.group(1)} failed responses")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    return rate, spent / max(count, 1) * 1e6


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(work: Path, runs: int, seconds: int, port: int) -> dict[str, Any]:
    size = bench_authz.sizes(True)
    bodies = bench_authz.http_requests(work, size, 2000)
    lua = bench_authz.WRK_SCRIPT % ",".join(
        json.dumps(json.dumps(b, ensure_ascii=False), ensure_ascii=False) for b in bodies
    )
    script = work / "single.lua"
    script.write_text(lua, encoding="utf-8")
    out: dict[str, dict[str, list[float]]] = {
        kind: {"rate": [], "cpu_us": []} for kind in ("bare", "healthz", "check")
    }
    loads: list[str] = []
    bare_port = port + 1 if port else free_port()
    with (
        bench_authz.serving(work, 2, port) as (base, token, server),
        bare_serving(bare_port) as bare,
    ):
        idhub_pids = bench_authz.worker_pids(server)
        bare_pids = bench_authz.worker_pids(bare)
        time.sleep(2)  # the roles warm-up after start
        header = ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
        for _ in range(runs):
            for kind in ("bare", "healthz", "check"):
                if kind == "bare":
                    got = wrk(f"http://127.0.0.1:{bare_port}/healthz", bare_pids, seconds, [])
                elif kind == "healthz":
                    got = wrk(base + "/healthz", idhub_pids, seconds, [])
                else:
                    got = wrk(base, idhub_pids, seconds, [*header, "-s", str(script)])
                out[kind]["rate"].append(got[0])
                out[kind]["cpu_us"].append(got[1])
            loads.append(Path("/proc/loadavg").read_text().split()[0])
    result: dict[str, Any] = {"loadavg_after_each_round": loads}
    for kind, figures in out.items():
        result[kind] = {
            "per_s": round(statistics.median(figures["rate"])),
            "cpu_us": round(statistics.median(figures["cpu_us"]), 1),
            "runs_per_s": [round(r) for r in figures["rate"]],
            "runs_cpu_us": [round(c, 1) for c in figures["cpu_us"]],
        }
    bare_us = result["bare"]["cpu_us"]
    result["healthz_over_bare"] = round(result["healthz"]["cpu_us"] / bare_us, 2)
    result["check_over_bare"] = round(result["check"]["cpu_us"] / bare_us, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--work", help="directory for the generated company (kept)")
    parser.add_argument(
        "--port", type=int, default=0, help="idhub's (the bare app's is +1); free ports if 0"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idhub-bench-pdp-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        if not (work / "policies").exists():
            size = bench_authz.sizes(True)
            rnd = random.Random(42)
            bench_authz.write_policy(work / "policies", size, rnd)
            bench_authz.write_directory(f"sqlite:///{work / 'idhub.db'}", size, rnd)
        result = measure(work, args.runs, args.seconds, args.port)
    print(json.dumps(result, indent=1))
    print(f"{'':10} {'req/s':>8} {'CPU µs/req':>11} {'x bare':>7}")
    for kind in ("bare", "healthz", "check"):
        row = result[kind]
        ratio = row["cpu_us"] / result["bare"]["cpu_us"]
        print(f"{kind:10} {row['per_s']:>8} {row['cpu_us']:>11} {ratio:>7.2f}")
    print("load average after each round:", " ".join(result["loadavg_after_each_round"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
