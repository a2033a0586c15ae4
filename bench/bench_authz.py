"""Authorization at enterprise size, idhub's index and plain pycasbin side by side.

Builds a synthetic company (20,000 users, 2,000 departments, 1,000 roles, 100,000 policy lines
in 4 domains, 20,000 static role links plus group/department/manager rules) as real policy
files and a real SQLite directory, then measures, each phase in its own process so the peak
RSS figures are honest:

  idhub   policy (re)load through AuthzService.reload (read + check + tests + index + warm),
          in-process decision latency and rate, scopes latency, peak RSS
  casbin  plain pycasbin on the same model and effective policy: one enforce with a plain-dict
          role manager (the linear scan), and the default domain role manager's time to its
          first decision, bounded by --casbin-timeout
  http    the decision API over real HTTP: uvicorn with 2 workers, batches of 100, a real
          client-credentials token from /token (skip with --no-http)

Usage: python bench/bench_authz.py [--quick] [--no-http] [--runs N] [--work DIR] [--skip PHASE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOMAINS = ("oa", "reimburse", "erp", "archive")
ACTIONS = ("create", "read", "update", "submit", "approve", "reject", "export", "delete")
SCOPES = ("all", "self", "dept", "dept_tree")


def sizes(quick: bool, lines: int | None = None) -> dict[str, int]:
    if lines is not None:
        # The enterprise company with a bigger policy (--lines 1000000): the same users,
        # departments and roles, more lines per role.
        return {**sizes(False), "lines": lines}
    if quick:
        return {
            "users": 2000,
            "departments": 200,
            "roles": 100,
            "lines": 10000,
            "links": 2000,
            "groups": 50,
            "types": 20,
        }
    return {
        "users": 20000,
        "departments": 2000,
        "roles": 1000,
        "lines": 100000,
        "links": 20000,
        "groups": 200,
        "types": 50,
    }


# ---------------------------------------------------------------------- the company


def departments(n: int) -> list[str]:
    regions = max(1, n // 100)
    out = ["/总部"] + [f"/总部/区{r}" for r in range(regions)]
    per = (n - len(out)) // regions + 1
    for r in range(regions):
        for d in range(per):
            if len(out) < n:
                out.append(f"/总部/区{r}/部{d}")
    return out


def write_policy(root: Path, size: dict[str, int], rnd: random.Random) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tests").mkdir(exist_ok=True)
    from idhub.core.authz.model import canonical_model_text

    (root / "model.conf").write_text(canonical_model_text(), encoding="utf-8")
    roles = [f"role{i}" for i in range(size["roles"])]
    types = [f"type{i}" for i in range(size["types"])]
    lines = ["# synthetic benchmark policy"]
    seen: set[tuple[str, ...]] = set()
    while len(seen) < size["lines"]:
        role, dom = rnd.choice(roles), rnd.choice(DOMAINS)
        obj, act = rnd.choice(types), rnd.choice(ACTIONS)
        deny = rnd.random() < 0.05
        scope = "self" if deny else rnd.choice(SCOPES)
        key = (role, dom, obj, act, scope)
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"p, {role}, {dom}, {obj}, {act}, {scope}, {'deny' if deny else 'allow'}")
    # a shallow inheritance forest (at most 2 levels), valid in every domain
    tier = max(2, size["roles"] // 10)
    for i in range(tier // 5, size["roles"]):
        if rnd.random() < 0.5:
            parent = rnd.randrange(0, tier // 5) if i < tier else rnd.randrange(0, tier)
            lines.append(f"g, role{i}, role{parent}, *")
    for _ in range(size["links"]):
        lines.append(
            f"g, user:u{rnd.randrange(size['users'])}, {rnd.choice(roles)}, {rnd.choice(DOMAINS)}"
        )
    (root / "policy.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    catalog = ["roles:"] + [f"  {r}: synthetic" for r in roles] + ["resources:"]
    for dom in DOMAINS:
        catalog.append(f"  {dom}:")
        catalog += [f"    {t}: [{', '.join(ACTIONS)}]" for t in types]
    (root / "catalog.yaml").write_text("\n".join(catalog) + "\n", encoding="utf-8")
    assign = [
        "everyone:",
        "  - {role: role0, domain: oa}",
        "  - {role: role0, domain: reimburse}",
        "groups:",
    ]
    assign += [
        f"  - {{group: g{g}, role: {rnd.choice(roles)}, domain: {rnd.choice(DOMAINS)}}}"
        for g in range(size["groups"])
    ]
    assign += [
        "departments:",
        "  - {department: /总部/区0, role: role1, domain: erp}",
        "managers:",
        "  - {role: role2, domain: '*'}",
    ]
    (root / "assignments.yaml").write_text("\n".join(assign) + "\n", encoding="utf-8")
    (root / "tests" / "directory.yaml").write_text(
        "departments:\n  - {path: /总部}\nusers:\n  - {username: u0, department: /总部}\n",
        encoding="utf-8",
    )
    (root / "tests" / "smoke.yaml").write_text(
        "cases:\n  - {name: everyone holds role0, user: u0, domain: oa, expect_roles: [role0]}\n",
        encoding="utf-8",
    )


def write_directory(db_url: str, size: dict[str, int], rnd: random.Random) -> None:
    from sqlalchemy import insert

    from idhub.adapters.database import apply_migrations, create_db_engine
    from idhub.adapters.db import departments as dept_t
    from idhub.adapters.db import group_members, groups, users
    from idhub.config import DatabaseSettings

    engine = create_db_engine(DatabaseSettings(url=db_url))
    apply_migrations(engine)
    now = time.time()
    paths = departments(size["departments"])
    ids = {p: i + 1 for i, p in enumerate(paths)}
    with engine.begin() as conn:
        conn.execute(
            insert(dept_t),
            [
                {
                    "id": ids[p],
                    "name": p.rsplit("/", 1)[1],
                    "path": p,
                    "parent_id": ids.get(p.rsplit("/", 1)[0]),
                    "source": "bench",
                    "manager_user_id": rnd.randrange(1, size["users"] + 1),
                    "created_at": now,
                    "updated_at": now,
                }
                for p in paths
            ],
        )
        conn.execute(
            insert(users),
            [
                {
                    "id": i + 1,
                    "sub": f"sub{i}",
                    "username": f"u{i}",
                    "display_name": "",
                    "department_id": rnd.randrange(1, len(paths) + 1),
                    "source": "bench",
                    "disabled": False,
                    "failed_logins": 0,
                    "attributes": {},
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(size["users"])
            ],
        )
        conn.execute(
            insert(groups),
            [
                {
                    "id": g + 1,
                    "name": f"g{g}",
                    "source": "bench",
                    "created_at": now,
                    "updated_at": now,
                }
                for g in range(size["groups"])
            ],
        )
        members = {
            (rnd.randrange(1, size["groups"] + 1), u + 1)
            for u in range(size["users"])
            for _ in range(2)
        }
        conn.execute(insert(group_members), [{"group_id": g, "user_id": u} for g, u in members])
    engine.dispose()


# ---------------------------------------------------------------------- phases


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_service(work: Path) -> Any:
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    settings = load_settings(
        None,
        env={
            "IDHUB_DATABASE_URL": f"sqlite:///{work / 'idhub.db'}",
            "IDHUB_POLICY_DIR": str(work / "policies"),
            "IDHUB_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
            "IDHUB_VAR_DIR": str(work / "var"),
        },
        cwd=work,
    )
    return Services(settings)


def requests(n: int, size: dict[str, int], rnd: random.Random) -> list[tuple[str, ...]]:
    paths = departments(size["departments"])
    return [
        (
            f"user:u{rnd.randrange(size['users'])}",
            rnd.choice(DOMAINS),
            f"type{rnd.randrange(size['types'])}",
            rnd.choice(ACTIONS),
            f"u{rnd.randrange(size['users'])}",
            rnd.choice(paths),
        )
        for _ in range(n)
    ]


def phase_idhub(work: Path, size: dict[str, int], runs: int) -> dict[str, Any]:
    services = make_service(work)
    authz = services.authz
    loads, cpu = [], []
    rss_before = rss_mb(os.getpid())
    rss_first = 0.0
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        outcome = authz.reload(trigger="bench")
        loads.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        assert outcome.ok, outcome.errors[:3] + outcome.failed_tests[:3]
        rss_first = rss_first or rss_mb(os.getpid())
    rss_reloaded = rss_mb(os.getpid())
    engine = authz.engine
    rnd = random.Random(5)
    reqs = requests(20000, size, rnd)
    # Before the background warm-up: each first request for a user computes its roles.
    cold = []
    for req in reqs[-5000:]:
        t0 = time.perf_counter_ns()
        engine.check(*req)
        cold.append(time.perf_counter_ns() - t0)
    started = time.perf_counter()
    engine.warm()
    warm_s = time.perf_counter() - started
    rss_warm = rss_mb(os.getpid())
    lat = []
    for req in reqs[:5000]:
        t0 = time.perf_counter_ns()
        engine.check(*req)
        lat.append(time.perf_counter_ns() - t0)
    # `decide`, as the decision API calls it: arguments canonicalised once while parsing.
    from idhub.core.identifiers import canonical_path, canonical_subject

    canonical = [(canonical_subject(r[0]), *r[1:5], canonical_path(r[5])) for r in reqs[:5000]]
    decide_lat = []
    for req in canonical:
        t0 = time.perf_counter_ns()
        engine.decide(*req)
        decide_lat.append(time.perf_counter_ns() - t0)
    rates, cpu_rates = [], []
    allowed = 0
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        for req in reqs:
            allowed += engine.check(*req).allowed
        rates.append(len(reqs) / (time.perf_counter() - started))
        cpu_rates.append(len(reqs) / (time.process_time() - started_cpu))
    scope_lat = []
    for req in reqs[:3000]:
        t0 = time.perf_counter_ns()
        engine.scopes(req[0], req[1], req[2], req[3])
        scope_lat.append(time.perf_counter_ns() - t0)
    return {
        "load_s": statistics.median(loads),
        "load_cpu_s": statistics.median(cpu),
        "warm_s": warm_s,
        "cold_decision_p50_us": statistics.median(cold) / 1000,
        "decision_p50_us": statistics.median(lat) / 1000,
        "decision_p99_us": sorted(lat)[int(len(lat) * 0.99)] / 1000,
        "decide_p50_us": statistics.median(decide_lat) / 1000,
        "decisions_per_s": statistics.median(rates),
        "decisions_per_cpu_s": statistics.median(cpu_rates),
        "allowed_ratio": allowed / (len(reqs) * runs),
        "scopes_p50_us": statistics.median(scope_lat) / 1000,
        "peak_rss_mb": peak_rss_mb(),
        # RSS with the services built and nothing loaded; after the first load; after every
        # reload (the allocator keeps what two engines side by side needed); after warm-up.
        "rss_mb": {
            "services": rss_before,
            "first_load": rss_first,
            "after_reloads": rss_reloaded,
            "warm": rss_warm,
        },
        # What the first load added (the policy, the directory snapshot, the role links),
        # per policy line: an upper bound on the cost of a line.
        "bytes_per_line": (rss_first - rss_before) * 1024 * 1024 / len(engine.policy.rules),
        "lines": len(engine.policy.rules),
        "links": len(engine.links),
    }


def phase_casbin(work: Path, size: dict[str, int], runs: int, timeout: float) -> dict[str, Any]:
    """Plain pycasbin scanning the same effective policy; its role manager replaced by plain
    dicts so the figure is the matcher scan alone (its default one is measured separately)."""
    import casbin

    from idhub.core.authz.reference import reference_enforcer

    services = make_service(work)
    engine = services.authz.engine
    enforcer = reference_enforcer_fast(engine, casbin, reference_enforcer)
    rnd = random.Random(5)
    reqs = requests(runs * 2, size, rnd)
    lat, agree = [], 0
    for req in reqs:
        started = time.perf_counter()
        result = enforcer.enforce(*req)
        lat.append(time.perf_counter() - started)
        agree += result == engine.check(*req).allowed
    return {
        "enforce_ms": statistics.median(lat) * 1000,
        "enforce_calls": len(reqs),
        "agree": agree,
        "peak_rss_mb": peak_rss_mb(),
    }


def reference_enforcer_fast(engine: Any, casbin: Any, reference_enforcer: Any) -> Any:
    enforcer = reference_enforcer(engine)

    class DictRoles:
        """Answers g() from the engine's dict role graph: same links, no quadratic build."""

        def has_link(self, name1: str, name2: str, *domain: str) -> bool:
            return name1 == name2 or name2 in engine.roles_of(name1, domain[0] if domain else "")

        def clear(self) -> None: ...
        def add_link(self, *a: str) -> None: ...
        def print_roles(self) -> None: ...

    enforcer.model["g"]["g"].rm = DictRoles()
    enforcer.rm_map["g"] = enforcer.model["g"]["g"].rm
    return enforcer


def phase_casbin_default(work: Path, size: dict[str, int]) -> dict[str, Any]:
    from idhub.core.authz.reference import reference_enforcer

    services = make_service(work)
    engine = services.authz.engine
    req = requests(1, size, random.Random(9))[0]
    started = time.perf_counter()
    enforcer = reference_enforcer(engine)
    enforcer.enforce(*req)
    return {"first_decision_s": time.perf_counter() - started}


def http_requests(work: Path, size: dict[str, int], n: int) -> list[dict[str, str]]:
    """Request bodies where 90% are allowed, as in a system that mostly asks about what its
    users are entitled to do (every denial is written to the audit trail)."""
    services = make_service(work)
    engine = services.authz.engine
    rnd = random.Random(11)
    allowed: list[tuple[str, ...]] = []
    denied: list[tuple[str, ...]] = []
    while len(allowed) < n * 9 // 10 or len(denied) < n // 10:
        req = requests(1, size, rnd)[0]
        if engine.check(*req).allowed:
            allowed.append(req)
        elif len(denied) < n // 10:
            denied.append(req)
    mix = allowed[: n * 9 // 10] + denied
    rnd.shuffle(mix)
    keys = ("user", "domain", "type", "action", "owner", "dept")
    return [dict(zip(keys, (r[0][len("user:") :], *r[1:]), strict=True)) for r in mix]


@contextlib.contextmanager
def serving(
    work: Path, workers: int, port: int = 0
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """`idhub serve --workers N` on the generated company: (base URL, a client-credentials
    access token with scope authz, the server process); on `port`, or a free one."""
    import socket

    import httpx

    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    env = {
        **os.environ,
        "IDHUB_DATABASE_URL": f"sqlite:///{work / 'idhub.db'}",
        "IDHUB_POLICY_DIR": str(work / "policies"),
        "IDHUB_SECRET_KEY": "bench-secret-key-0123456789abcdef0123456789",
        "IDHUB_VAR_DIR": str(work / "var"),
        "IDHUB_ISSUER": f"http://127.0.0.1:{port}",
    }
    services = make_service(work)
    services.keys.ensure_active(lambda _line: None)
    from idhub.errors import Conflict

    try:
        # authz:admin: the questions are about every domain, not only the client's own.
        _, secret = services.clients.register(
            "bench-pdp-all", grant_types=["client_credentials"], scope="authz authz:admin"
        )
    except Conflict:  # a kept --work directory from an earlier run
        _, secret = services.clients.rotate_secret("bench-pdp-all")
    del services
    # To a file: an unread pipe fills after 64 KiB and then blocks every worker that logs.
    log = work / f"serve-{port}.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "idhub",
                "serve",
                "--workers",
                str(workers),
                "--port",
                str(port),
            ],
            env=env,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                tail = log.read_bytes().decode(errors="replace")[-2000:]
                raise RuntimeError(f"server did not become ready: {tail}")
            time.sleep(0.5)
        token = httpx.post(
            base + "/token",
            auth=("bench-pdp-all", secret or ""),
            timeout=10,
            data={
                "grant_type": "client_credentials",
                "resource": "idhub",
                "scope": "authz authz:admin",
            },
        ).json()["access_token"]
        yield base, token, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def worker_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """The server's worker processes (children of the supervisor)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        return []
    # uvicorn's supervisor also starts multiprocessing's resource tracker: not a worker.
    return [p for p in pids if "resource_tracker" not in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def phase_http(work: Path, size: dict[str, int], runs: int) -> dict[str, Any]:
    import threading

    import httpx

    bodies = http_requests(work, size, 100 * 50)
    batches = [{"requests": bodies[i : i + 100]} for i in range(0, len(bodies), 100)]
    with serving(work, 2) as (base, token, _server):
        headers = {"Authorization": f"Bearer {token}"}

        def worker(stop_at: float, counts: list[int], errors: list[int]) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                i = 0
                while time.monotonic() < stop_at:
                    response = client.post("/api/v1/authz/check", json=batches[i % len(batches)])
                    i += 1
                    if response.status_code == 200:
                        counts.append(len(response.json()["results"]))
                    else:
                        errors.append(response.status_code)

        rates = []
        errors: list[int] = []
        for _ in range(runs):
            counts: list[int] = []
            started = time.monotonic()
            stop_at = started + 10
            threads = [
                threading.Thread(target=worker, args=(stop_at, counts, errors)) for _ in range(6)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rates.append(sum(counts) / (time.monotonic() - started))
    return {
        "decisions_per_s": statistics.median(rates),
        "runs": [round(r) for r in rates],
        "errors": len(errors),
        "allowed_share": 0.9,
    }


WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/api/v1/authz/check", nil, bodies[i])
end
"""


def phase_http_single(work: Path, size: dict[str, int], runs: int) -> dict[str, Any]:
    """Single decisions (one question per request, as most systems ask) with `wrk -t1 -c32`
    against 2 workers, interleaved with a bare `/healthz` run as the baseline: rate, server
    CPU per request from /proc, and the RSS of the supervisor and the workers, idle and after
    the load."""
    import shutil

    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed"}
    bodies = http_requests(work, size, 2000)
    lua = WRK_SCRIPT % ",".join(
        json.dumps(json.dumps(b, ensure_ascii=False), ensure_ascii=False) for b in bodies
    )
    script = work / "single.lua"
    script.write_text(lua, encoding="utf-8")
    with serving(work, 2) as (base, token, server):
        workers = worker_pids(server)
        time.sleep(2)  # the roles warm-up after start
        idle = {"supervisor": rss_mb(server.pid), "workers": [rss_mb(p) for p in workers]}
        header = ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
        out: dict[str, list[float]] = {"rate": [], "cpu_us": [], "healthz": [], "healthz_us": []}
        for _ in range(runs):
            for kind in ("check", "healthz"):
                cmd = ["wrk", "-t1", "-c32", "-d10s"]
                cmd += (
                    [*header, "-s", str(script), base] if kind == "check" else [base + "/healthz"]
                )
                before = cpu_s(workers)
                text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                spent = cpu_s(workers) - before
                count = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
                non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
                if non2xx:
                    raise RuntimeError(f"{kind}: {non2xx.group(1)} failed responses")
                rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
                key = "rate" if kind == "check" else "healthz"
                out[key].append(rate)
                out["cpu_us" if kind == "check" else "healthz_us"].append(spent / count * 1e6)
        loaded = {"supervisor": rss_mb(server.pid), "workers": [rss_mb(p) for p in workers]}
    return {
        "decisions_per_s": statistics.median(out["rate"]),
        "runs": [round(r) for r in out["rate"]],
        "cpu_us_per_decision": statistics.median(out["cpu_us"]),
        "healthz_per_s": statistics.median(out["healthz"]),
        "healthz_cpu_us": statistics.median(out["healthz_us"]),
        "rss_idle_mb": idle,
        "rss_after_load_mb": loaded,
    }


def run_phase(name: str, work: Path, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    cmd = (
        [
            sys.executable,
            __file__,
            "--phase",
            name,
            "--work",
            str(work),
            "--runs",
            str(args.runs),
        ]
        + (["--quick"] if args.quick else [])
        + ([f"--lines={args.lines}"] if args.lines else [])
    )
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    except subprocess.CalledProcessError as exc:
        return {"error": exc.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    parser.add_argument(
        "--no-http", dest="http", action="store_false", help="skip the decision API over HTTP"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--casbin-timeout", type=float, default=60.0)
    parser.add_argument("--phase")
    parser.add_argument("--work", help="directory for the generated company (kept)")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="phase to skip: casbin, casbin-default, http-single",
    )
    parser.add_argument(
        "--lines", type=int, help="policy lines (the enterprise company otherwise), e.g. 1000000"
    )
    args = parser.parse_args()
    size = sizes(args.quick, args.lines)
    if args.phase:
        work = Path(args.work)
        if args.phase == "idhub":
            result = phase_idhub(work, size, args.runs)
        elif args.phase == "casbin":
            result = phase_casbin(work, size, args.runs, args.casbin_timeout)
        elif args.phase == "casbin-default":
            result = phase_casbin_default(work, size)
        elif args.phase == "http":
            result = phase_http(work, size, args.runs)
        elif args.phase == "http-single":
            result = phase_http_single(work, size, args.runs)
        else:
            raise SystemExit(f"unknown phase {args.phase}")
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="idhub-bench-authz-") as tmp:
        # --work keeps the generated company for re-runs (e.g. on a quieter machine).
        work = Path(args.work) if args.work else Path(tmp)
        if not (work / "policies").exists():
            rnd = random.Random(42)
            started = time.perf_counter()
            write_policy(work / "policies", size, rnd)
            write_directory(f"sqlite:///{work / 'idhub.db'}", size, rnd)
            print(f"generated {size} in {time.perf_counter() - started:.1f}s", flush=True)
        idhub = run_phase("idhub", work, args, 900)
        casbin = {} if "casbin" in args.skip else run_phase("casbin", work, args, 900)
        default = (
            {}
            if "casbin-default" in args.skip
            else run_phase("casbin-default", work, args, args.casbin_timeout)
        )
        http = run_phase("http", work, args, 900) if args.http else {}
        single = (
            run_phase("http-single", work, args, 900)
            if args.http and "http-single" not in args.skip
            else {}
        )
    print(
        json.dumps(
            {
                "idhub": idhub,
                "casbin": casbin,
                "casbin_default": default,
                "http": http,
                "http_single": single,
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            },
            indent=1,
        )
    )
    rows = [
        ("policy (re)load: read+check+test+index", f"{idhub.get('load_s', 0):.2f} s", "<= 3 s"),
        ("  of which CPU time", f"{idhub.get('load_cpu_s', 0):.2f} s", ""),
        ("roles warm-up after the swap (background)", f"{idhub.get('warm_s', 0):.2f} s", ""),
        (
            "decision p50, user's first request",
            f"{idhub.get('cold_decision_p50_us', 0):.1f} µs",
            "",
        ),
        ("decision p50 (in-process)", f"{idhub.get('decision_p50_us', 0):.1f} µs", "<= 20 µs"),
        ("decision p99 (in-process)", f"{idhub.get('decision_p99_us', 0):.1f} µs", ""),
        (
            "decide p50 (canonical arguments, as the API)",
            f"{idhub.get('decide_p50_us', 0):.1f} µs",
            "<= 10 µs at 1M lines",
        ),
        (
            "decisions/s, one core (wall clock)",
            f"{idhub.get('decisions_per_s', 0):,.0f}",
            ">= 50,000",
        ),
        ("decisions per CPU second", f"{idhub.get('decisions_per_cpu_s', 0):,.0f}", ""),
        ("scopes p50", f"{idhub.get('scopes_p50_us', 0):.1f} µs", "<= 200 µs"),
        ("peak RSS (idhub phase)", f"{idhub.get('peak_rss_mb', 0):.0f} MB", "<= 400 MB"),
        (
            "RSS after the first load / after warm-up",
            f"{idhub.get('rss_mb', {}).get('first_load', 0):.0f} / "
            f"{idhub.get('rss_mb', {}).get('warm', 0):.0f} MB",
            "<= 500 MB at 1M lines",
        ),
        ("memory per policy line (first load)", f"{idhub.get('bytes_per_line', 0):.0f} B", ""),
    ]
    if casbin:
        rows.append(
            (
                "pycasbin enforce, dict role manager",
                f"{casbin.get('enforce_ms', 0):.0f} ms",
                f"agree {casbin.get('agree')}/{casbin.get('enforce_calls')}",
            )
        )
    if default:
        rows.append(
            (
                "pycasbin default role manager, first decision",
                f"{default['first_decision_s']:.1f} s"
                if "first_decision_s" in default
                else f"> {default.get('timeout', '?')} s (stopped)",
                "",
            )
        )
    if "enforce_ms" in casbin and idhub.get("decision_p50_us"):
        ratio = casbin["enforce_ms"] * 1000 / idhub["decision_p50_us"]
        rows.append(("idhub vs pycasbin (p50 decision)", f"{ratio:,.0f}x faster", ""))
    if http:
        rows.append(
            (
                "decision API, batches of 100, 2 workers",
                f"{http.get('decisions_per_s', 0):,.0f}/s",
                ">= 10,000/s",
            )
        )
    if single and "decisions_per_s" in single:
        rows += [
            (
                "single decisions over HTTP, 2 workers, wrk -c32",
                f"{single['decisions_per_s']:,.0f}/s",
                ">= 8,000/s",
            ),
            ("  server CPU per decision", f"{single['cpu_us_per_decision']:.0f} µs", ""),
            (
                "  bare /healthz, same run",
                f"{single['healthz_per_s']:,.0f}/s, {single['healthz_cpu_us']:.0f} µs",
                "",
            ),
            (
                "  RSS supervisor / workers, idle",
                f"{single['rss_idle_mb']['supervisor']:.0f} / "
                + " ".join(f"{w:.0f}" for w in single["rss_idle_mb"]["workers"])
                + " MB",
                "",
            ),
            (
                "  RSS supervisor / workers, after load",
                f"{single['rss_after_load_mb']['supervisor']:.0f} / "
                + " ".join(f"{w:.0f}" for w in single["rss_after_load_mb"]["workers"])
                + " MB",
                "<= 150 MB at 100k lines",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\nauthz benchmark ({'quick' if args.quick else 'full'} size; {os.cpu_count()} cores)")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>16}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
