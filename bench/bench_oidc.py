"""OIDC token-side throughput: `idhub serve --workers 2` on SQLite (or a throwaway PostgreSQL
database with `--database postgresql`), loaded by wrk on 127.0.0.1.

Scenarios: client-credentials tokens (client_secret_basic, ES256, one audit event each),
introspection of an active access token, code exchange (each request redeems a different
authorization code: ES256 access token, RS256 ID token, a new refresh family), refresh-token
grants (each request rotates a different refresh family), discovery and JWKS. Codes and
refresh families are spread over `--users` users (default 1,000): one user's families share
its cached row and index pages and understate the cost. Each scenario runs RUNS times for DURATION
seconds; the table shows the median run's rate and latency and the total of non-2xx answers
and socket errors over all runs. Traffic goes only to 127.0.0.1; everything lives in a
temporary directory that is removed afterwards.

    .venv/bin/python bench/bench_oidc.py [--duration 5] [--runs 3] [--connections 32]
        [--users 1000] [--database sqlite|postgresql] [--port PORT] [--only SCENARIO ...]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

GOALS = {
    "client_credentials": 1000,
    "introspection": 2000,
    "code_exchange": 700,
    "refresh": 1500,
    "discovery": 5000,
    "jwks": 5000,
    # The cheapest route of the same app, measured in the same run: what the machine allows.
    "healthz (baseline)": 0,
}


REFRESH_LUA = """
local tokens = {}
local i = 0
function init(args)
  local offset = tonumber(args[1])
  local n = 0
  for line in io.lines("%s") do
    n = n + 1
    if n > offset then tokens[#tokens + 1] = line end
  end
end
function request()
  i = i + 1
  local body = "%s" .. tokens[i]
  return wrk.format("POST", "/token", {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "%s"}, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lua_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_post_script(path: Path, body: str, auth: str) -> Path:
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {lua_quote(body)}\n"
        'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
        f'wrk.headers["Authorization"] = {lua_quote(auth)}\n',
        encoding="utf-8",
    )
    return path


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _ms(value: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", value)
    if not match:
        return float("nan")
    number, unit = float(match.group(1)), match.group(2)
    return number / 1000 if unit == "us" else number * 1000 if unit == "s" else number


def run_wrk(
    url: str,
    *,
    duration: int,
    connections: int,
    script: Path | None = None,
    args: tuple[str, ...] = (),
) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if args:
        cmd += ["--", *args]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = int(non2xx.group(1)) if non2xx else 0
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return {"rate": rate, "p50": p50, "p99": p99, "errors": errors, "requests": total}


PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIRECT = "http://127.0.0.1:9/cb"


@contextlib.contextmanager
def database(kind: str, var: Path) -> Iterator[str]:
    """The database URL to serve from: a SQLite file, or a PostgreSQL database made for the
    run (on the local server) and dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{var / 'idhub.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"idhub_bench_oidc_{os.getpid()}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def init_idhub(root: Path, url: str) -> tuple[Path, dict[str, str]]:
    """An `idhub.toml` under `root` for the database at `url` with the shipped policies (not
    watched), initialised with `idhub init`; returns it and the environment that names it."""
    var = root / "var"
    var.mkdir(exist_ok=True)
    config = root / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n[database]\nurl = "{url}"\n'
        f'[policy]\ndir = "{Path(__file__).resolve().parents[1] / "policies"}"\nwatch = false\n',
        encoding="utf-8",
    )
    env = {**os.environ, "IDHUB_CONFIG": str(config)}
    subprocess.run(
        [sys.executable, "-m", "idhub", "-c", str(config), "init"],
        check=True,
        env=env,
        capture_output=True,
    )
    return config, env


def prepare(root: Path, url: str, count: int, user_count: int) -> dict[str, Any]:
    """Creates the config, runs `idhub init`, registers clients, creates `user_count` users and
    pre-issues `count` refresh tokens and `count` authorization codes spread over them."""
    config, env = init_idhub(root, url)

    from sqlalchemy import insert

    from idhub.adapters.db import authorization_codes, refresh_families, refresh_tokens, users
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    services = Services(load_settings(config, env={}))
    _, cc_secret = services.clients.register(
        "bench-cc",
        grant_types=["client_credentials"],
        scope="authz",
        allowed_audiences=["reimburse"],
    )
    _, web_secret = services.clients.register(
        "bench-web",
        redirect_uris=[REDIRECT],
        scope="openid profile",
        grant_types=["authorization_code", "refresh_token"],
    )
    services.identity.create_user(username="bench-user-0", display_name="Bench 0")
    now = time.time()
    with services.engine.begin() as conn:
        template = dict(conn.execute(users.select().limit(1)).one()._mapping)
        del template["id"]
        conn.execute(
            users.insert(),
            [
                {**template, "username": f"bench-user-{n}", "sub": f"bench-sub-{n:06d}",
                 "display_name": f"Bench {n}", "email": None}
                for n in range(1, user_count)
            ],
        )  # fmt: skip
        user_ids = [row[0] for row in conn.execute(users.select().with_only_columns(users.c.id))]
    client = services.clients.get("bench-cc")
    assert client is not None and cc_secret and web_secret
    access, _ = services.access_tokens.issue(
        client, sub="bench-cc", audience="idhub", scopes=["authz"], ttl=3600
    )
    tokens_file = root / "refresh.txt"
    families, rows, lines = [], [], []
    for n in range(count):
        token, token_hash, expires_at = services.token_minter.new_refresh_token()
        family_id = f"bench-{n:08d}"
        families.append(
            {
                "id": family_id,
                "client_id": "bench-web",
                "user_id": user_ids[n % len(user_ids)],
                "sid": None,
                "scope": "openid profile",
                "audience": "bench-web",
                "auth_time": now,
                "created_at": now,
                "revoked_at": None,
                "revoked_reason": None,
            }
        )
        rows.append(
            {
                "token_hash": token_hash,
                "family_id": family_id,
                "issued_at": now,
                "expires_at": expires_at,
                "rotated_at": None,
            }
        )
        lines.append(token)
    codes_file = root / "codes.txt"
    codes, code_lines = [], []
    for n in range(count):
        code = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        codes.append(
            {
                "code_hash": hashlib.sha256(code.encode()).hexdigest(),
                "client_id": "bench-web",
                "user_id": user_ids[(n * 7) % len(user_ids)],
                "redirect_uri": REDIRECT,
                "scope": "openid profile",
                "nonce": None,
                "code_challenge": None,
                "code_challenge_method": None,
                "resource": None,
                "sid": None,
                "auth_time": now,
                "acr": None,
                "amr": ["pwd"],
                "created_at": now,
                "expires_at": now + 3600,
                "used_at": None,
            }
        )
        code_lines.append(code)
    with services.engine.begin() as conn:
        conn.execute(insert(refresh_families), families)
        conn.execute(insert(refresh_tokens), rows)
        conn.execute(insert(authorization_codes), codes)
    tokens_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    codes_file.write_text("\n".join(code_lines) + "\n", encoding="utf-8")
    services.close()
    return {
        "config": config,
        "env": env,
        "cc_secret": cc_secret,
        "web_secret": web_secret,
        "access": access,
        "tokens_file": tokens_file,
        "codes_file": codes_file,
    }


def server_log(config: Path, port: int) -> Path:
    return config.parent / f"serve-{port}.log"


def log_summary(log: Path, *, shown: int = 3) -> str:
    """How many warnings and errors the server logged, and the commonest few (numbers
    masked so that one message counts once), for the line under the table."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "WARNING" not in line and "ERROR" not in line and "Traceback" not in line:
            continue
        shape = re.sub(r"\d+(\.\d+)?", "N", line)[-160:]
        counts[shape] = counts.get(shape, 0) + 1
    if not counts:
        return "server log: no warnings or errors"
    total = sum(counts.values())
    common = sorted(counts.items(), key=lambda item: -item[1])[:shown]
    return f"server log: {total} warnings or errors; commonest:\n" + "\n".join(
        f"  {n} x {shape}" for shape, n in common
    )


@contextlib.contextmanager
def serve(
    config: Path,
    env: dict[str, str],
    port: int,
    *,
    start_timeout: float = 90,  # a busy machine starts slowly
) -> Iterator[subprocess.Popen[bytes]]:
    # The server's log goes to a file, not a pipe: a pipe nobody reads fills after 64 KiB and
    # then blocks every worker that logs (a burst of warnings under load would stall the run
    # it is about), and the file is there to count what went wrong (`log_summary`).
    log = server_log(config, port)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "idhub",
                "-c",
                str(config),
                "serve",
                "--workers",
                "2",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                tail = log.read_bytes().decode(errors="replace")[-2000:]
                raise RuntimeError(f"idhub serve exited: {tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"idhub serve did not answer within {start_timeout:.0f}s")
            time.sleep(0.2)
        time.sleep(1.5)  # let both workers finish starting
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def peak_rss_mb(pid: int) -> float:
    """Largest VmHWM among the server process's children (the workers)."""
    peak = 0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return float("nan")
    for child in [str(pid), *children]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    return peak / 1024


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of the server and every live descendant (its workers) so far: on a
    shared machine the CPU a request costs stays meaningful when the rate it reaches does not."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the command name (which may hold spaces) start at state (field 3).
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return total / os.sysconf("SC_CLK_TCK")


def warm(base: str, data: dict[str, Any]) -> None:
    auth = {"Authorization": basic("bench-cc", data["cc_secret"])}
    for _ in range(50):
        httpx.post(base + "/token", data={"grant_type": "client_credentials"}, headers=auth)
        httpx.post(base + "/introspect", data={"token": data["access"]}, headers=auth)
        httpx.get(base + "/jwks")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    # On a shared machine each user of it keeps to a port range of their own.
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package `wrk`)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="idhub-bench-oidc-"))
    try:
        with database(opts.database, root / "var") as url:
            return bench(root, url, opts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(root: Path, url: str, opts: argparse.Namespace) -> int:
    per_run = 3000 * opts.duration
    # Codes and refresh tokens only when a scenario spends them: on a busy box the bulk insert
    # of tens of thousands of them overran the statement timeout before a client-credentials
    # run could start.
    spends = opts.only is None or {"code_exchange", "refresh"} & set(opts.only)
    data = prepare(root, url, per_run * opts.runs + 1000 if spends else 10, max(1, opts.users))
    port = opts.port or free_port()
    base = f"http://127.0.0.1:{port}"
    cc_auth = basic("bench-cc", data["cc_secret"])
    scripts = {
        "client_credentials": (
            write_post_script(root / "cc.lua", "grant_type=client_credentials", cc_auth),
            base + "/token",
        ),
        "introspection": (
            write_post_script(root / "in.lua", f"token={data['access']}", cc_auth),
            base + "/introspect",
        ),
        "discovery": (None, base + "/.well-known/openid-configuration"),
        "jwks": (None, base + "/jwks"),
        "healthz (baseline)": (None, base + "/healthz"),
    }
    web_auth = basic("bench-web", data["web_secret"])
    refresh_lua = root / "refresh.lua"
    refresh_lua.write_text(
        REFRESH_LUA % (data["tokens_file"], "grant_type=refresh_token&refresh_token=", web_auth),
        encoding="utf-8",
    )
    code_lua = root / "code.lua"
    code_lua.write_text(
        REFRESH_LUA % (
            data["codes_file"],
            f"grant_type=authorization_code&redirect_uri={quote(REDIRECT, safe='')}&code=",
            web_auth,
        ),
        encoding="utf-8",
    )  # fmt: skip
    order = [
        "client_credentials",
        "introspection",
        "code_exchange",
        "refresh",
        "discovery",
        "jwks",
        "healthz (baseline)",
    ]
    if opts.only:
        order = [o for o in order if o in opts.only]
    results: dict[str, list[dict[str, float]]] = {}
    with serve(data["config"], data["env"], port) as proc:
        warm(base, data)
        for name in order:
            runs = []
            for run in range(opts.runs):
                cpu_before = server_cpu_seconds(proc.pid)
                if name in ("refresh", "code_exchange"):
                    runs.append(
                        run_wrk(
                            base + "/token",
                            duration=opts.duration,
                            connections=opts.connections,
                            script=refresh_lua if name == "refresh" else code_lua,
                            args=(str(run * per_run),),
                        )
                    )
                else:
                    script, url = scripts[name]
                    runs.append(
                        run_wrk(
                            url,
                            duration=opts.duration,
                            connections=opts.connections,
                            script=script,
                        )
                    )
                used = server_cpu_seconds(proc.pid) - cpu_before
                runs[-1]["cpu_us"] = used / max(1, runs[-1]["requests"]) * 1e6
            results[name] = runs
        rss = peak_rss_mb(proc.pid)
    print(
        f"idhub serve --workers 2, {opts.database}, {opts.users} users, "
        f"wrk -t1 -c{opts.connections} "
        f"{opts.duration}s x {opts.runs} runs (median run), {os.cpu_count()} CPUs"
    )
    header = (
        f"{'operation':20} {'req/s':>9} {'goal':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU µs':>7} {'errors':>7}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for name, runs in results.items():
        median = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
        errors = int(sum(r["errors"] for r in runs))
        # Server CPU per request (both workers), the median over the runs.
        cpu = sorted(r["cpu_us"] for r in runs)[len(runs) // 2]
        met = median["rate"] >= GOALS[name] and errors == 0
        ok = ok and met
        print(
            f"{name:20} {median['rate']:9.0f} {GOALS[name] or '-':>7} {median['p50']:8.2f} "
            f"{median['p99']:8.2f} {cpu:7.0f} {errors:7d}{'' if met else '  (goal not met)'}"
        )
    print(f"peak worker RSS: {rss:.0f} MiB")
    print(log_summary(server_log(data["config"], port)))
    spread = {n: [round(r["rate"]) for r in rs] for n, rs in results.items()}
    print(f"all runs (req/s): {spread}")
    print(f"load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
