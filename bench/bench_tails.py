"""Where the latency tail of `idhub serve --workers 2` comes from, next to the peer's.

bench/bench_peer.py reports each server's p99; this script says why it is what it is. For each
run of `wrk -t1 -c32` it records, besides p50/p90/p99 and the maximum:

- how the 32 keep-alive connections were spread over idhub's workers (`ss`, half-way through
  the run): the workers share one listening socket, the first to wake accepts what is queued,
  and a worker holding 25 of the 32 connections answers each of them ~1.5x slower than an
  even split would;
- each server process's CPU time and its threads' run-queue wait (`/proc/PID/task/*/schedstat`:
  time runnable but not running). On a 2-core box shared with wrk and other work, a worker
  whose wait is as large as its CPU time spent half the run waiting for a core, and every
  connection it holds waited with it: that is the operating system, not the worker's code.

Same servers and scenarios as bench/bench_peer.py (idhub on SQLite: introspection of an ES256
JWT and ES256 client credentials; the peer: oidc-provider, one Node process).

    .venv/bin/python bench/bench_tails.py [--duration 5] [--runs 3] [--port-base PORT]
        [--only introspection "cc ES256"]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_oidc import basic, free_port, serve, write_post_script
from bench_peer import CC_BODY, PEER_DIR, peer_opaque_token, prepare_idhub, serve_peer

SCENARIOS = ("introspection", "cc ES256")


def process_tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def schedstat(pid: int) -> tuple[float, float]:
    """CPU seconds and run-queue wait seconds of all threads of `pid` (live ones)."""
    run = wait = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                fields = (task / "schedstat").read_text().split()
                run += int(fields[0])
                wait += int(fields[1])
    return run / 1e9, wait / 1e9


def connections(port: int) -> dict[int, int]:
    """Established connections on `port` per process holding them."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    held: dict[int, int] = {}
    for line in out.splitlines():
        found = re.search(r"pid=(\d+)", line)
        if found:
            held[int(found.group(1))] = held.get(int(found.group(1)), 0) + 1
    return held


def _ms(value: str) -> float:
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * scale[unit]


def load(script: Path, url: str, port: int, duration: int) -> tuple[dict[str, float], list[int]]:
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", str(script), url],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(duration / 2)
    spread = sorted(connections(port).values(), reverse=True)
    out = wrk.communicate()[0]
    row = {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "max": _ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
    }
    for pct in ("50", "90", "99"):
        row["p" + pct] = _ms(re.search(rf"\s{pct}%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return row, spread


def measure(label: str, pid: int, script: Path, url: str, port: int, duration: int) -> None:
    pids = process_tree(pid)
    before = {p: schedstat(p) for p in pids}
    row, spread = load(script, url, port, duration)
    parts = []
    for p in pids:
        run, wait = (a - b for a, b in zip(schedstat(p), before[p], strict=True))
        if run > 0.05:  # the supervisor and multiprocessing's tracker do next to nothing
            parts.append(f"{run:.2f}s cpu / {wait:.2f}s waiting")
    print(
        f"{label:6} {row['rate']:7.0f} {row['p50']:7.2f} {row['p90']:7.2f} {row['p99']:7.2f} "
        f"{row['max']:7.1f}  {'/'.join(map(str, spread)):8}  {'; '.join(parts)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, choices=SCENARIOS)
    opts = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("ss") is None:
        print("wrk and ss (iproute2) are needed", file=sys.stderr)
        return 2
    if not (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        print("the peer is not installed: run `npm ci` in bench/peer", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if not opts.only or s in opts.only]
    root = Path(tempfile.mkdtemp(prefix="idhub-bench-tails-"))
    try:
        data = prepare_idhub(root)
        iport = opts.port_base or free_port()
        pport = opts.port_base + 1 if opts.port_base else free_port()
        secret = secrets.token_urlsafe(32)
        ibase, pbase = f"http://127.0.0.1:{iport}", f"http://127.0.0.1:{pport}"
        with (
            serve(data["config"], data["env"], iport, start_timeout=90) as idhub,
            serve_peer(pport, secret) as peer,
        ):
            opaque = peer_opaque_token(pbase, basic("bench-opaque", secret))
            es = data["auth"]["bench-es"]
            targets = {
                ("introspection", "idhub"): (
                    write_post_script(root / "i-in.lua", f"token={data['access']}", es),
                    ibase + "/introspect",
                ),
                ("cc ES256", "idhub"): (
                    write_post_script(root / "i-es.lua", CC_BODY, es),
                    ibase + "/token",
                ),
                ("introspection", "peer"): (
                    write_post_script(
                        root / "p-in.lua", f"token={opaque}", basic("bench-opaque", secret)
                    ),
                    pbase + "/token/introspection",
                ),
                ("cc ES256", "peer"): (
                    write_post_script(root / "p-es.lua", CC_BODY, basic("bench-es", secret)),
                    pbase + "/token",
                ),
            }
            sides = {"idhub": (idhub.pid, iport), "peer": (peer.pid, pport)}
            print(
                f"wrk -t1 -c32 {opts.duration}s per run; {os.cpu_count()} CPUs; "
                "connections per process half-way through; per process: CPU and run-queue wait"
            )
            print(
                f"{'server':6} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7}"
            )
            for name in scenarios:
                for side, (_pid, port) in sides.items():  # warm: JIT, caches, pools
                    script, url = targets[(name, side)]
                    load(script, url, port, 2)
                for run in range(opts.runs):
                    print(f"-- {name}, run {run + 1}, load average {os.getloadavg()[0]:.1f}")
                    order = ("idhub", "peer") if run % 2 == 0 else ("peer", "idhub")
                    for side in order:
                        pid, port = sides[side]
                        script, url = targets[(name, side)]
                        measure(side, pid, script, url, port, opts.duration)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
