"""Sign in with DingTalk: what one sign-in costs idhub on top of the platform's own calls.

In this process: the local DingTalk fake (tests/dingtalk_fake.py, 127.0.0.1) and idhub's
upstream flow (core/upstream_flow.py) on a fresh SQLite database whose users were synced from
the fake. Per sign-in, both sides make the same three calls to the fake (the login page that
hands out the code, `userAccessToken`, `contact/users/me`):

- bare: plain httpx making those three calls (the floor any client sits on);
- idhub: `begin` (state stored, `login.upstream_started` audited), the login page, then
  `complete` (state checked and taken, the two API calls, the user found, the session started
  with its `login.succeeded` event).

Medians over --runs of --count sign-ins each, milliseconds per sign-in, and the ratio.

    python bench/bench_upstream_signin.py [--count 200] [--runs 3] [--max-seconds 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.dingtalk_fake import APP_KEY, APP_SECRET, DingTalkFake, company  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdefghijklmnop"
CALLBACK = "http://127.0.0.1:9/login/upstream/dingtalk-bench/callback"


def _code(http: httpx.Client, url: str) -> dict[str, str]:
    """The login page's redirect back: its query (authCode, state)."""
    answer = http.get(url)
    assert answer.status_code == 302, answer.text
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}


def bare(fake: DingTalkFake, http: httpx.Client, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        fake.scan_as = f"dt{n % 100:06d}"
        back = _code(
            http,
            f"{fake.url}/oauth2/auth?client_id={APP_KEY}&response_type=code&scope=openid"
            f"&redirect_uri={CALLBACK}&state=s&prompt=consent",
        )
        token = http.post(
            f"{fake.url}/v1.0/oauth2/userAccessToken",
            json={
                "clientId": APP_KEY,
                "clientSecret": APP_SECRET,
                "code": back["authCode"],
                "grantType": "authorization_code",
            },
        ).json()
        me = http.get(
            f"{fake.url}/v1.0/contact/users/me",
            headers={"x-acs-dingtalk-access-token": token["accessToken"]},
        ).json()
        assert me["unionId"]
    return time.perf_counter() - started


def idhub(services: object, fake: DingTalkFake, http: httpx.Client, count: int) -> float:
    from idhub.core.signin import PasswordSignIn

    flow = services.upstream  # type: ignore[attr-defined]
    started = time.perf_counter()
    for n in range(count):
        fake.scan_as = f"dt{n % 100:06d}"
        up = flow.begin("dingtalk-bench", redirect_uri=CALLBACK, return_to=None, ctx=None)
        params = _code(http, up.url)
        done = flow.complete(
            "dingtalk-bench",
            redirect_uri=CALLBACK,
            params=params,
            state_cookie=up.cookie,
            session_cookie=None,
            ctx=None,
        )
        assert isinstance(done.step, PasswordSignIn)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    from idhub.bootstrap import Services
    from idhub.config import load_settings

    fake = DingTalkFake(company(users=100, departments=5)).start()
    bares: list[float] = []
    ours: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, httpx.Client(timeout=30) as http:
            db = Path(tmp) / "idhub.db"
            config = Path(tmp) / "idhub.toml"
            config.write_text(
                f'var_dir = "{tmp}"\n[database]\nurl = "sqlite:///{db}"\n'
                f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n'
                f'[directory.dingtalk.bench]\nbase_url = "{fake.url}"\napp_key = "{APP_KEY}"\n'
                'app_secret_env = "BENCH_DT_SECRET"\nsign_in = true\n'
                f'login_url = "{fake.url}"\napi_url = "{fake.url}"\n',
                encoding="utf-8",
            )
            env = {"IDHUB_SECRET_KEY": SECRET, "BENCH_DT_SECRET": APP_SECRET}
            services = Services(load_settings(config, env=env))
            services.migrate()
            try:
                assert services.oa_sync("dingtalk:bench").run().status == "succeeded"
                idhub(services, fake, http, 10)  # warm-up: imports, connections
                for _ in range(args.runs):
                    if time.monotonic() > deadline:
                        break
                    bares.append(bare(fake, http, args.count))
                    ours.append(idhub(services, fake, http, args.count))
            finally:
                services.close()
    finally:
        fake.stop()
    if not ours:
        print("no run finished within --max-seconds", file=sys.stderr)
        return 1
    load = os.getloadavg()
    b, i = (statistics.median(x) * 1000 / args.count for x in (bares, ours))
    print(f"{args.count} DingTalk sign-ins per run; runs: {len(ours)}")
    print(f"load average during the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"bare httpx (3 platform calls)   {b:7.2f} ms per sign-in")
    print(f"idhub begin + complete          {i:7.2f} ms per sign-in  ({i / b:.1f}x bare)")
    print(f"idhub's own share               {i - b:7.2f} ms per sign-in")
    return 0


if __name__ == "__main__":
    sys.exit(main())
