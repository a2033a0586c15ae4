"""Memory of one `idhub serve` worker: where it goes at start-up, and what it is idle and after a
minute of load (issue 15: "report RSS idle and after a minute of load").

Two companies: the demo (`idhub init --demo`, the repository's `policies/`) and the generated
enterprise of bench/bench_authz.py (20,000 users, 100,000 policy lines by default; `--lines`).
For each, two phases, each in its own process:

  steps   one process doing what a worker does, one step at a time (import the application,
          build the services and routes, load the policy, warm every user's roles), with RSS,
          PSS and anonymous memory from /proc/self/smaps_rollup after each step
  serve   `idhub serve --workers 2`: the supervisor's and each worker's RSS / PSS / anonymous
          memory once the workers are warm (idle), then after `--load-seconds` (60) of single
          decisions from `wrk -t1 -c32`, with server CPU per request from /proc

PSS counts a page shared by n processes as 1/n of it, so the sum of the workers' PSS is what
they cost together; RSS counts every shared page in full.

Usage: python bench/bench_memory.py [--lines N] [--load-seconds S] [--skip demo|company]
       [--skip-serve] [--work DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench_authz

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-key-0123456789abcdef0123456789"


def smaps(pid: int | str = "self") -> dict[str, float]:
    """RSS, PSS and anonymous memory in MB (one read of smaps_rollup)."""
    out = {"rss": 0.0, "pss": 0.0, "anon": 0.0}
    names = {"Rss:": "rss", "Pss:": "pss", "Anonymous:": "anon"}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in names:
            out[names[parts[0]]] = round(int(parts[1]) / 1024, 1)
    return out


def environment(work: Path, port: int = 0) -> dict[str, str]:
    env = {
        "IDHUB_DATABASE_URL": f"sqlite:///{work / 'idhub.db'}",
        "IDHUB_POLICY_DIR": str(work / "policies"),
        "IDHUB_SECRET_KEY": SECRET,
        "IDHUB_VAR_DIR": str(work / "var"),
    }
    if port:
        env["IDHUB_ISSUER"] = f"http://127.0.0.1:{port}"
    return env


# ---------------------------------------------------------------------- the companies


def make_demo(work: Path) -> None:
    shutil.copytree(REPO / "policies", work / "policies")
    subprocess.run(
        [sys.executable, "-m", "idhub", "init", "--demo"],
        env={**os.environ, **environment(work)},
        cwd=work,
        check=True,
        capture_output=True,
        timeout=300,
    )


def make_company(work: Path, lines: int) -> None:
    size = bench_authz.sizes(False, lines)
    rnd = random.Random(42)
    bench_authz.write_policy(work / "policies", size, rnd)
    bench_authz.write_directory(f"sqlite:///{work / 'idhub.db'}", size, rnd)


# ---------------------------------------------------------------------- phase: steps


def phase_steps(work: Path) -> dict[str, Any]:
    """What a worker does at start, step by step, in this (fresh) process."""
    steps: dict[str, dict[str, float]] = {"interpreter": smaps()}
    os.environ.update(environment(work, 26999))
    os.chdir(work)
    import logging

    logging.disable(logging.WARNING)  # the company's "nobody can hold role" warnings
    from idhub.web import asgi

    steps["import the application"] = smaps()
    app: Any = asgi.create()
    steps["services and routes built"] = smaps()
    services = app.state.services
    services.authz.load_for_serving()
    steps["policy loaded"] = smaps()
    services.authz.engine.warm()
    steps["roles warm"] = smaps()
    return {"steps": steps, "modules": len(sys.modules)}


# ---------------------------------------------------------------------- phase: serve


def questions(work: Path, count: int) -> list[dict[str, str]]:
    """Decision API bodies over the company's own users, lines and departments."""
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    services = Services(load_settings(None, env=environment(work), cwd=work))
    engine = services.authz.engine
    rnd = random.Random(7)
    users = sorted(engine.directory.users.values(), key=lambda u: u.username)
    table = engine.policy.rules
    lines = [table[i] for i in rnd.sample(range(len(table)), min(len(table), 500))]
    depts = sorted(engine.directory.departments) or ["/"]
    out = []
    for _ in range(count):
        user, rule = rnd.choice(users), rnd.choice(lines)
        domain = rule.domain if rule.domain != "*" else engine.domains[0]
        out.append(
            {
                "user": user.username,
                "domain": domain,
                "type": rule.obj if rule.obj != "*" else "document",
                "action": rule.act if rule.act != "*" else "read",
                "owner": rnd.choice(users).username,
                "dept": user.department or rnd.choice(depts),
            }
        )
    return out


@contextlib.contextmanager
def serving(work: Path, port: int = 0) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """`idhub serve --workers 2` on `work` (base URL, a decision-API token, the server):
    bench_authz's, since both lay out a work directory the same way (`environment`)."""
    with bench_authz.serving(work, 2, port) as served:
        yield served


def settled(pids: list[int], bound: float = 120.0) -> None:
    """Waits until the workers' CPU stops moving (the roles warm-up after start is done)."""
    deadline = time.monotonic() + bound
    last = bench_authz.cpu_s(pids)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = bench_authz.cpu_s(pids)
        if now - last < 0.05:
            return
        last = now


def phase_serve(work: Path, load_seconds: int, port: int = 0) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed"}
    bodies = questions(work, 2000)
    lua = bench_authz.WRK_SCRIPT % ",".join(
        json.dumps(json.dumps(b, ensure_ascii=False), ensure_ascii=False) for b in bodies
    )
    script = work / "memory.lua"
    script.write_text(lua, encoding="utf-8")
    with serving(work, port) as (base, token, server):
        workers = bench_authz.worker_pids(server)
        settled(workers)
        idle = {"supervisor": smaps(server.pid), "workers": [smaps(p) for p in workers]}
        cmd = ["wrk", "-t1", "-c32", f"-d{load_seconds}s"]
        cmd += ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
        before = bench_authz.cpu_s(workers)
        text = subprocess.run(
            [*cmd, "-s", str(script), base],
            capture_output=True,
            text=True,
            check=True,
            timeout=load_seconds + 60,
        ).stdout
        spent = bench_authz.cpu_s(workers) - before
        count = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
        failed = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
        loaded = {"supervisor": smaps(server.pid), "workers": [smaps(p) for p in workers]}
    return {
        "idle": idle,
        "after_load": loaded,
        "requests": count,
        "failed": int(failed.group(1)) if failed else 0,
        "cpu_us_per_request": round(spent / max(count, 1) * 1e6, 1),
    }


# ---------------------------------------------------------------------- driver


def run_phase(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", name, "--work", str(work)]
    cmd += [f"--load-seconds={args.load_seconds}", f"--port={args.port}"]
    try:
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, timeout=args.load_seconds + 900
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    except subprocess.CalledProcessError as exc:
        return {"error": exc.stderr.strip().splitlines()[-3:]}
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def median_steps(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    good = [r["steps"] for r in runs if "steps" in r]
    if not good:
        return {}
    return {
        step: {k: statistics.median(r[step][k] for r in good) for k in good[0][step]}
        for step in good[0]
    }


def print_table(name: str, steps: dict[str, dict[str, float]], serve: dict[str, Any]) -> None:
    print(f"\n{name}: start-up of one worker (MB; median of the runs)")
    print(f"  {'step':30s} {'RSS':>7s} {'PSS':>7s} {'anon':>7s}")
    for step, m in steps.items():
        print(f"  {step:30s} {m['rss']:7.1f} {m['pss']:7.1f} {m['anon']:7.1f}")
    if "idle" not in serve:
        if serve:
            print(f"  serve: {serve}")
        return
    print(f"{name}: `idhub serve --workers 2` (MB)")
    for when in ("idle", "after_load"):
        sup = serve[when]["supervisor"]
        print(f"  {when:11s} supervisor RSS {sup['rss']:.1f}")
        for i, w in enumerate(serve[when]["workers"]):
            figures = f"RSS {w['rss']:.1f}  PSS {w['pss']:.1f}  anon {w['anon']:.1f}"
            print(f"  {when:11s} worker {i} {figures}")
    print(
        f"  load: {serve['requests']} single decisions ({serve['failed']} failed), "
        f"{serve['cpu_us_per_request']} µs server CPU each"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase")
    parser.add_argument("--work", help="directory for the companies (kept)")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--load-seconds", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3, help="runs of the steps phase")
    parser.add_argument("--skip", action="append", default=[], help="demo or company")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="for `serve` (default: a free one)")
    args = parser.parse_args()
    if args.phase:
        work = Path(args.work)
        if args.phase == "steps":
            result = phase_steps(work)
        elif args.phase == "serve":
            result = phase_serve(work, args.load_seconds, args.port)
        else:
            raise SystemExit(f"unknown phase {args.phase}")
        print(json.dumps(result))
        return 0

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="idhub-bench-memory-") as tmp:
        root = Path(args.work) if args.work else Path(tmp)
        for name in ("demo", "company"):
            if name in args.skip:
                continue
            work = root / (name if name == "demo" else f"company-{args.lines}")
            if not (work / "policies").exists():
                work.mkdir(parents=True, exist_ok=True)
                if name == "demo":
                    make_demo(work)
                else:
                    make_company(work, args.lines)
            runs = [run_phase("steps", work, args) for _ in range(args.runs)]
            serve = {} if args.skip_serve else run_phase("serve", work, args)
            results[name] = {"steps": median_steps(runs), "serve": serve, "raw": runs}
            print_table(name, results[name]["steps"], serve)
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average {' '.join(loadavg)}")
    print(json.dumps({**results, "loadavg": loadavg}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
