"""What metrics and JSON logs cost per request: server CPU per client-credentials token.

The same `idhub serve --workers 1` on SQLite is run with `/metrics` off, on, and on with JSON
logs, interleaved round by round, each loaded by wrk (client_secret_basic, ES256, one audit
event per token) on 127.0.0.1. CPU per request comes from the server process's own
utime+stime in /proc, so it stays comparable on a busy shared machine where requests per
second do not. `--baseline-src DIR` adds a side running another checkout's code (for example
the main branch before metrics existed) with the same script.

    .venv/bin/python bench/bench_operate.py [--duration 5] [--rounds 3] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SECRET_KEY = "bench-operate-secret-key-0123456789abcdefgh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(root: Path) -> tuple[Path, str]:
    config = root / "idhub.toml"
    config.write_text(
        f'var_dir = "{root / "var"}"\n[database]\nurl = "sqlite:///{root / "var" / "idhub.db"}"\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n',
        encoding="utf-8",
    )
    env = {**os.environ, "IDHUB_SECRET_KEY": SECRET_KEY}
    subprocess.run(
        [sys.executable, "-m", "idhub", "-c", str(config), "init"],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    services = Services(load_settings(config, env={"IDHUB_SECRET_KEY": SECRET_KEY}))
    _, secret = services.clients.register(
        "bench-cc", grant_types=["client_credentials"], scope="authz", allowed_audiences=["idhub"]
    )
    services.close()
    assert secret is not None
    return config, "Basic " + base64.b64encode(f"bench-cc:{secret}".encode()).decode()


@contextlib.contextmanager
def serve(config: Path, env: dict[str, str], port: int) -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("idhub serve did not start")
            time.sleep(0.2)
        yield proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, auth: str, pid: int, duration: int, root: Path) -> tuple[float, float, int]:
    script = root / "cc.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.body = "grant_type=client_credentials"\n'
        'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
        f'wrk.headers["Authorization"] = "{auth}"\n',
        encoding="utf-8",
    )
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{duration}s", "-s", str(script), url + "/token"],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(pid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return cpu / max(total, 1) * 1e6, rate, int(bad.group(1)) if bad else 0


def in_process_cost(count: int = 200_000) -> dict[str, float]:
    """Microseconds of the metric calls one token request makes, in this process."""
    from idhub.adapters.prometheus_metrics import PrometheusMetrics
    from idhub.core.metrics import count_audit_event

    prom = PrometheusMetrics()
    details = {"grant_type": "client_credentials", "client_id": "bench-cc", "scope": "authz"}

    def per_call(step: object) -> float:
        started = time.perf_counter()
        for _ in range(count):
            step()  # type: ignore[operator]
        return (time.perf_counter() - started) / count * 1e6

    return {
        "request counter + histogram": per_call(
            lambda: (
                prom.inc("idhub_http_requests_total", "/token", "POST", "200"),
                prom.observe("idhub_http_request_duration_seconds", 0.004, "/token", "POST", "200"),
            )
        ),
        "token counter (from its audit event)": per_call(
            lambda: count_audit_event(prom, "token.issued", "bench-cc", details)
        ),
        "audit append histogram": per_call(
            lambda: prom.observe("idhub_audit_append_duration_seconds", 0.0003)
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, default=None)
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package `wrk`)", file=sys.stderr)
        return 2
    base_env = {**os.environ, "IDHUB_SECRET_KEY": SECRET_KEY}
    base_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    sides = {
        "metrics off": {**base_env, "IDHUB_METRICS_ENABLED": "false"},
        "metrics on": {**base_env},
        "metrics on, JSON logs": {**base_env, "IDHUB_LOG_FORMAT": "json"},
    }
    if opts.baseline_src is not None:
        sides = {"baseline": {**base_env, "PYTHONPATH": str(opts.baseline_src)}, **sides}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in sides}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="idhub-bench-operate-") as tmp:
        root = Path(tmp)
        config, auth = prepare(root)
        for _ in range(opts.rounds):
            for name, env in sides.items():
                port = free_port()
                with serve(config, env, port) as pid:
                    url = f"http://127.0.0.1:{port}"
                    for _ in range(30):  # warm: keys loaded, policy built
                        httpx.post(
                            url + "/token", data={"grant_type": "client_credentials"},
                            headers={"Authorization": auth},
                        )  # fmt: skip
                    results[name].append(measure(url, auth, pid, opts.duration, root))
                load.append(os.getloadavg()[0])
    print(
        f"idhub serve --workers 1, SQLite, client credentials (ES256), wrk -t1 -c8 "
        f"{opts.duration}s x {opts.rounds} rounds interleaved; load average "
        f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs"
    )
    header = f"{'side':24} {'CPU us/token':>13} {'ratio':>6} {'tokens/s':>9} {'non-2xx':>8}"
    print(header)
    print("-" * len(header))
    reference = statistics.median(r[0] for r in results["metrics off"])
    for name, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        print(
            f"{name:24} {cpu:>13.0f} {cpu / reference:>6.2f} {rate:>9.0f} "
            f"{sum(r[2] for r in runs):>8}"
        )
    costs = in_process_cost()
    print(f"\n{'metric work per token, in process':40} {'us':>6}")
    for name, micros in costs.items():
        print(f"{name:40} {micros:>6.2f}")
    print(f"{'total':40} {sum(costs.values()):>6.2f}")
    return 0 if all(r[2] == 0 for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
