"""CPU per code exchange and per refresh, in-process: `Provider.token` called in a loop on one
thread (no HTTP, no second worker), on SQLite or a throwaway PostgreSQL database, with the
codes and refresh families `bench_oidc.prepare` spreads over `--users` users.

What it shows is the grant's own cost (authlib dispatch, client authentication, storage,
signing, the audit append and commit), measured as process CPU time per request, which stays
meaningful on a shared machine where req/s over HTTP does not. `--profile` prints the top
cProfile entries of the last run of each scenario.

    .venv/bin/python bench/bench_grants.py [--count 2000] [--runs 3] [--users 1000]
        [--database sqlite|postgresql] [--only code_exchange refresh] [--batch 1] [--profile]

`--batch N` hands the requests over N at a time (`Provider.token_many`, what the token endpoint
does on SQLite with what queued while the last batch ran): the batch's code exchanges and
refreshes share one unit of work (oidc/grant_batch.py).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_oidc import REDIRECT, database, prepare

SCENARIOS = ("code_exchange", "refresh")


def _request(issuer: str, form: dict[str, str], secret: str) -> Any:
    from idhub.core.audit import RequestContext
    from idhub.oidc.messages import OAuthRequestData

    basic = base64.b64encode(f"bench-web:{secret}".encode()).decode()
    return OAuthRequestData(
        "POST",
        issuer + "/token",
        {"content-type": "application/x-www-form-urlencoded", "authorization": f"Basic {basic}"},
        form,
        {k: [v] for k, v in form.items()},
        RequestContext("127.0.0.1", "bench", "bench-grants"),
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000, help="requests per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=1, help="requests per token_many call")
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="idhub-bench-grants-"))
    try:
        with database(opts.database, root / "var") as url:
            return bench(root, url, opts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(root: Path, url: str, opts: argparse.Namespace) -> int:
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    data = prepare(root, url, opts.count * opts.runs + 10, max(1, opts.users))
    services = Services(load_settings(data["config"], env={}))
    issuer = services.settings.server.issuer
    secret = data["web_secret"]
    lines = {
        "code_exchange": data["codes_file"].read_text(encoding="utf-8").split(),
        "refresh": data["tokens_file"].read_text(encoding="utf-8").split(),
    }

    def form(name: str, value: str) -> dict[str, str]:
        if name == "code_exchange":
            return {"grant_type": "authorization_code", "code": value, "redirect_uri": REDIRECT}
        return {"grant_type": "refresh_token", "refresh_token": value}

    # Warm-up (imports, caches, prepared statements) on requests not counted below.
    for name in SCENARIOS:
        for value in lines[name][-10:]:
            answer = services.oidc.token(_request(issuer, form(name, value), secret))
            assert answer.status == 200, answer
    order = [s for s in SCENARIOS if not opts.only or s in opts.only]
    print(
        f"in-process Provider.token, {opts.database}, {opts.users} users, "
        f"{opts.count} requests x {opts.runs} runs, batches of {max(1, opts.batch)}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for name in order:
        per_request = []
        for run in range(opts.runs):
            values = lines[name][run * opts.count : (run + 1) * opts.count]
            requests = [_request(issuer, form(name, v), secret) for v in values]
            profiler = cProfile.Profile() if opts.profile and run == opts.runs - 1 else None
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            step = max(1, opts.batch)
            for start in range(0, len(requests), step):
                for answer in services.oidc.token_many(requests[start : start + step]):
                    if answer.status != 200:
                        raise SystemExit(f"{name}: {answer.status} {answer.body!r}")
            if profiler is not None:
                profiler.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            per_request.append((cpu / len(requests) * 1e6, wall / len(requests) * 1e6))
            if profiler is not None:
                print(f"--- profile of {name}, last run")
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
        per_request.sort()
        cpu_us, wall_us = per_request[len(per_request) // 2]
        runs = ", ".join(f"{c:.0f}" for c, _ in per_request)
        print(
            f"{name:14} CPU {cpu_us:7.0f} µs/request (runs: {runs}), wall {wall_us:7.0f} µs"
            f" -> {1e6 / cpu_us:6.0f}/s per core"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
