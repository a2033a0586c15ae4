"""Client-credentials tokens below the web layer: `Provider.token_many` called in process.

What the SQLite `/token` endpoint's batch thread does for a batch of lean client-credentials
requests (client_secret_basic, scope `authz`, resource `reimburse`, as bench/bench_peer.py
sends them): plan, throttle read, secret check, the signed token and the batch's
`token.issued` events committed in one append, on a real SQLite file made by `idhub init`.

    .venv/bin/python bench/bench_cc_tokens.py [--alg ES256|RS256] [--count 2000] [--runs 3]
        [--batch 8] [--warm 200]

Prints CPU µs per token (median of the runs). For a load-independent comparison of two code
versions count instructions with callgrind at two counts and take the difference per token
(start-up cancels):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python bench/bench_cc_tokens.py \
        --runs 1 --count 1200   # minus the same at --count 200, divided by 1000

That difference still carries whatever of the start-up differs between two runs (the keys
`idhub init` makes, the services' set-up): up to ~35,000 instructions per token here. The
timed runs go through `functools.reduce` (the warm-up does not), so callgrind can count
only them:

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        --callgrind-out-file=/tmp/cc.out python bench/bench_cc_tokens.py --runs 1 --count 1600
    # the total in /tmp/cc.out divided by 1600
"""

from __future__ import annotations

import argparse
import base64
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_oidc import init_idhub


def _requests(issuer: str, auth: str, count: int) -> list[Any]:
    from idhub.core.audit import RequestContext
    from idhub.oidc.messages import OAuthRequestData

    form = {"grant_type": "client_credentials", "scope": "authz"}
    return [
        OAuthRequestData(
            "POST",
            issuer + "/token",
            {"content-type": "application/x-www-form-urlencoded", "authorization": auth},
            dict(form),
            {k: [v] for k, v in form.items()},
            RequestContext("127.0.0.1", "wrk", f"req-{n}"),
        )
        for n in range(count)
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alg", choices=["ES256", "RS256", "EdDSA"], default="ES256")
    parser.add_argument("--count", type=int, default=2000, help="tokens per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="requests per token_many call")
    parser.add_argument("--warm", type=int, default=200, help="tokens before the runs")
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="idhub-bench-cc-"))
    try:
        return bench(root, opts)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench(root: Path, opts: argparse.Namespace) -> int:
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    config, _ = init_idhub(root, f"sqlite:///{root / 'var' / 'idhub.db'}")
    services = Services(load_settings(config, env={}))
    _, secret = services.clients.register(
        "bench-cc",
        grant_types=["client_credentials"],
        scope="authz",
        access_token_alg=opts.alg,
        default_audience="reimburse",
        allowed_audiences=["reimburse"],
    )
    auth = "Basic " + base64.b64encode(f"bench-cc:{secret}".encode()).decode()
    issuer = services.settings.server.issuer
    step = max(1, opts.batch)

    def batch(_: None, requests: list[Any]) -> None:
        for answer in services.oidc.token_many(requests):
            if answer.status != 200:
                raise SystemExit(f"{answer.status} {answer.body!r}")

    def batches(requests: list[Any]) -> list[list[Any]]:
        return [requests[start : start + step] for start in range(0, len(requests), step)]

    for warm in batches(_requests(issuer, auth, opts.warm)):
        batch(None, warm)
    per_token = []
    for _ in range(opts.runs):
        timed = batches(_requests(issuer, auth, opts.count))
        cpu = time.process_time()
        functools.reduce(batch, timed, None)  # what callgrind's --toggle-collect counts
        per_token.append((time.process_time() - cpu) / opts.count * 1e6)
    per_token.sort()
    runs = ", ".join(f"{c:.0f}" for c in per_token)
    print(
        f"cc {opts.alg} batch {step}: CPU {per_token[len(per_token) // 2]:.0f} µs/token"
        f" (runs: {runs}); load average {os.getloadavg()[0]:.2f}"
    )
    services.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
