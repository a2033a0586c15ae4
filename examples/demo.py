"""`make demo` (`python -m examples.demo`): idhub with the demo company and policies, and the
OA and reimbursement examples next to it, all on 127.0.0.1; Ctrl-C stops all three.

It does what an admin would do by hand (docs/tutorial.md): `idhub init --demo`, then registers
each system as a client at the address it is served on (`idhub client add`, or a fresh secret
with `idhub client rotate-secret` when it is already registered that way), then serves.
Ports: IDHUB_PORT (8000), OA_PORT (8001), REIMBURSE_PORT (8002).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from idhub.core.clients import TOKEN_EXCHANGE
from idhub.demo import CLIENTS, DEMO_SCOPE, USERS, DemoClient


class DemoError(Exception):
    """Why the demo cannot start, in one line."""


@dataclass(frozen=True)
class Plan:
    issuer: str
    idhub_port: int
    ports: Mapping[str, int]  # client id -> port

    def base(self, client_id: str) -> str:
        return f"http://127.0.0.1:{self.ports[client_id]}"


def plan_from(env: Mapping[str, str]) -> Plan:
    def port(name: str, default: int) -> int:
        value = env.get(name, str(default))
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise DemoError(f"{name}={value!r} is not a port number")
        return int(value)

    idhub_port = port("IDHUB_PORT", 8000)
    ports = {demo.client_id: port(f"{demo.client_id.upper()}_PORT", demo.port) for demo in CLIENTS}
    issuer = env.get("IDHUB_ISSUER", f"http://127.0.0.1:{idhub_port}")
    return Plan(issuer=issuer, idhub_port=idhub_port, ports=ports)


def idhub(*args: str, env: Mapping[str, str]) -> str:
    """Runs one idhub command; its output, or `DemoError` with its one-line error."""
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "idhub", *args], env=dict(env), capture_output=True, text=True
    )
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "failed").splitlines()[-1]
        raise DemoError(f"idhub {' '.join(args[:2])}: {last}")
    return done.stdout


def wanted(demo: DemoClient, base: str) -> dict[str, Any]:
    grants = ["authorization_code", "refresh_token", "client_credentials"]
    if demo.allowed_audiences:
        grants.append(TOKEN_EXCHANGE)
    return {
        "redirect_uris": [f"{base}/callback"],
        "post_logout_redirect_uris": [f"{base}/logged-out"],
        "backchannel_logout_uri": f"{base}/backchannel-logout",
        "grant_types": grants,
        "scope": DEMO_SCOPE,
        "allowed_audiences": list(demo.allowed_audiences),
    }


def register(
    demo: DemoClient, base: str, *, listed: Sequence[Mapping[str, Any]], env: Mapping[str, str]
) -> str:
    """Makes sure `demo` is registered as served at `base` (`listed`: `idhub client list
    --json`); returns a fresh secret."""
    want = wanted(demo, base)
    current = next((c for c in listed if c["client_id"] == demo.client_id), None)
    if current is not None and _same(current, want):
        rotated = json.loads(idhub("client", "rotate-secret", demo.client_id, "--json", env=env))
        return str(rotated["client_secret"])
    if current is not None:
        idhub("client", "remove", demo.client_id, env=env)
    args = ["client", "add", demo.client_id, "--name", demo.name, "--first-party", "--json"]
    args += ["--redirect-uri", want["redirect_uris"][0]]
    args += ["--post-logout-redirect-uri", want["post_logout_redirect_uris"][0]]
    args += ["--backchannel-logout-uri", want["backchannel_logout_uri"], "--scope", DEMO_SCOPE]
    for grant in want["grant_types"]:
        args += ["--grant", "token_exchange" if grant == TOKEN_EXCHANGE else grant]
    for audience in want["allowed_audiences"]:
        args += ["--allowed-audience", audience]
    return str(json.loads(idhub(*args, env=env))["client_secret"])


def _same(current: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """Registered as `want` says (lists and scopes compared as sets)."""
    for key, value in want.items():
        have = current.get(key)
        if key == "scope":
            have, value = set(str(have).split()), set(value.split())
        elif isinstance(value, list):
            have, value = sorted(have or []), sorted(value)
        if have != value:
            return False
    return True


def require_free(port: int, what: str) -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise DemoError(
                f"port {port} ({what}) is in use: stop what serves it (`make run`, an earlier "
                f"demo?) or choose another with {what.upper()}_PORT"
            )


def wait_until_up(url: str, child: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise DemoError(f"{what} stopped while starting (exit code {child.returncode})")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise DemoError(f"{what} did not answer at {url} within 60 s")


def start(plan: Plan, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    require_free(plan.idhub_port, "idhub")
    for demo in CLIENTS:
        require_free(plan.ports[demo.client_id], demo.client_id)
    env = {**env, "IDHUB_ISSUER": plan.issuer, "IDHUB_PORT": str(plan.idhub_port)}
    idhub("init", "--demo", env=env)
    app_env = dict(env)
    listed = json.loads(idhub("client", "list", "--json", env=env))
    for demo in CLIENTS:
        prefix = demo.client_id.upper()
        base = plan.base(demo.client_id)
        app_env[f"{prefix}_CLIENT_SECRET"] = register(demo, base, listed=listed, env=env)
        app_env[f"{prefix}_URL"] = plan.base(demo.client_id)
    app_env["OA_PEER_URL"] = plan.base("reimburse")
    app_env["REIMBURSE_PEER_URL"] = plan.base("oa")
    children = [_spawn(["-m", "idhub", "serve", "--workers", "1"], env)]
    wait_until_up(plan.issuer + "/healthz", children[0], "idhub")
    for demo in CLIENTS:
        children.append(_spawn(["-m", f"examples.{demo.client_id}"], app_env))
        wait_until_up(plan.base(demo.client_id) + "/logged-out", children[-1], demo.client_id)
    return children


def _spawn(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # Own process group: Ctrl-C reaches the demo, which then stops each child itself.
    return subprocess.Popen([sys.executable, *args], env=dict(env), start_new_session=True)  # noqa: S603


def banner(plan: Plan) -> str:
    lines = [
        "",
        "idhub demo is running (Ctrl-C stops all three):",
        f"  OA 办公系统         {plan.base('oa')}/",
        f"  费用报销 reimburse  {plan.base('reimburse')}/",
        f"  idhub              {plan.issuer}/  (login page {plan.issuer}/login)",
        "",
        "demo users (username / password):",
    ]
    for person in USERS:
        lines.append(
            f"  {person.username:6} {person.password:14} {person.name} {person.department}"
        )
    lines += [
        "",
        "try: alice files a travel request in OA; bob approves it; alice files the expense "
        "report in reimbursement; bob approves it; carol pays it (she enrols a second factor "
        "first: finance roles need one); kate reads the archive.",
    ]
    return "\n".join(lines)


def stop(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> int:
    children: list[subprocess.Popen[bytes]] = []
    try:
        plan = plan_from(os.environ)
        children = start(plan, dict(os.environ))
        print(banner(plan), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        raise DemoError("a process of the demo stopped; stopping the others")
    except DemoError as exc:
        print(f"make demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the demo", flush=True)
        return 0
    finally:
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
