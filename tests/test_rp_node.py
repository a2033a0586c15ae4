"""An independent relying party: Node's openid-client (pinned in tests/rp_node/package-lock.json)
runs the code + PKCE flow against idhub. The Node script does discovery and builds the
authorization URL; this test plays the browser (posting the real login form) and hands the
callback URL back; the script exchanges the code, validates the ID token and calls userinfo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.sso_support import follow, make_user, query_of, register_client, sign_in_at

pytestmark = pytest.mark.node

RP_DIR = Path(__file__).resolve().parent / "rp_node"


def _node_ready() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed (`make system-deps` installs it)")
    if not (RP_DIR / "node_modules" / "openid-client").is_dir():
        pytest.fail(
            "openid-client is not installed: run `make node-deps` (npm ci in tests/rp_node)"
        )
    return node


def _read(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        err = process.stderr.read() if process.stderr else ""
        raise AssertionError(f"the Node RP ended early: {err}")
    result: dict[str, Any] = json.loads(line)
    return result


def test_openid_client_code_flow_with_pkce(live_server: LiveServer) -> None:
    node = _node_ready()
    services, issuer = live_server.services, live_server.url
    alice = make_user(
        services, "alice", "alice-demo-1", display_name="王小丽", email="alice@example.com"
    )
    _, secret = register_client(services, "oa", port=8001)
    process = subprocess.Popen(
        [node, "rp.mjs", issuer, "oa", secret, "http://127.0.0.1:8001/callback"],
        cwd=RP_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = _read(process)
        assert "error" not in start, start
        assert start["iss_parameter_supported"] is True
        url = start["authorization_url"]
        assert url.startswith(f"{issuer}/authorize?")
        assert query_of(url)["code_challenge_method"] == "S256"
        with httpx.Client(base_url=issuer) as browser:
            callback = sign_in_at(browser, follow(browser, url), "alice", "alice-demo-1")
        assert callback.status_code == 302
        assert process.stdin is not None
        process.stdin.write(callback.headers["location"] + "\n")
        process.stdin.flush()
        result = _read(process)
        assert process.wait(timeout=30) == 0, result
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "error" not in result, result
    claims = result["claims"]
    assert claims["sub"] == alice.sub and claims["iss"] == issuer and claims["aud"] == "oa"
    assert claims["sid"] == services.sessions.active_for_user(alice.id)[0].sid
    assert result["userinfo"]["sub"] == alice.sub
    assert result["userinfo"]["name"] == "王小丽"


def test_openid_client_rejects_a_tampered_callback(live_server: LiveServer) -> None:
    """The same RP refuses a callback whose `iss` is not idhub's (RFC 9207 mix-up defence):
    proof that the Node side really checks what idhub sends."""
    node = _node_ready()
    services, issuer = live_server.services, live_server.url
    make_user(services, "bob", "bob-demo-1")
    _, secret = register_client(services, "oa", port=8001)
    process = subprocess.Popen(
        [node, "rp.mjs", issuer, "oa", secret, "http://127.0.0.1:8001/callback"],
        cwd=RP_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = _read(process)["authorization_url"]
        with httpx.Client(base_url=issuer) as browser:
            callback = sign_in_at(browser, follow(browser, url), "bob", "bob-demo-1")
        location = callback.headers["location"].replace(
            httpx.QueryParams({"iss": issuer}).__str__(), "iss=http%3A%2F%2Fevil.example"
        )
        assert "evil.example" in location
        assert process.stdin is not None
        process.stdin.write(location + "\n")
        process.stdin.flush()
        result = _read(process)
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert result.get("error") == "OAUTH_INVALID_RESPONSE", result
    assert any('"iss"' in cause for cause in result["cause"]), result
