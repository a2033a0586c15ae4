"""`idhub user ...` and `idhub demo` / `idhub init --demo`, run in-process against a real
database (SQLite and PostgreSQL); the demo is then used for a real sign-in."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer
from tests.sso_support import cli_config_for, events, follow, login, query_of, sign_in_at

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")


def test_user_commands(
    live_server: LiveServer, run_cli: Callable[..., Any], tmp_path: Path, db_url: str
) -> None:
    services = live_server.services
    config = cli_config_for(tmp_path, db_url)
    added = run_cli(
        "user",
        "add",
        "zhang",
        "--name",
        "张伟",
        "--department",
        # Not finance: the policy asks the finance department for a second factor.
        "/总部/华东区/销售一部",
        "--create-department",
        "--email",
        "zhang@example.com",
        "--password-stdin",
        "--json",
        config=config,
        stdin="zhang-secret-1\n",
    )
    assert added.code == 0, added.err
    info = json.loads(added.out)
    assert info["username"] == "zhang" and info["department"] == "/总部/华东区/销售一部"
    assert "zhang-secret-1" not in added.out
    # No terminal and no --password-stdin: refused, nothing created.
    refused = run_cli("user", "add", "li", config=config, stdin="")
    assert refused.code == 2 and "--password-stdin" in refused.err
    assert services.identity.get_user_by_username("li") is None
    short = run_cli("user", "add", "li", "--password-stdin", config=config, stdin="short\n")
    assert short.code == 2 and "at least 8 characters" in short.err
    dup = run_cli("user", "add", "zhang", "--no-password", config=config)
    assert dup.code == 2 and "already exists" in dup.err

    with httpx.Client(base_url=live_server.url) as browser:
        assert login(browser, "zhang", "zhang-secret-1").status_code == 200
        listed = run_cli("user", "list", config=config)
        assert listed.code == 0 and "张伟" in listed.out and "active" in listed.out
        shown = json.loads(run_cli("user", "show", "zhang", "--json", config=config).out)
        assert shown["active_sessions"] == 1 and shown["sub"] == info["sub"]
        disabled = run_cli("user", "disable", "zhang", "--reason", "left", config=config)
        assert disabled.code == 0 and "ended 1 session(s)" in disabled.out
        assert login(browser, "zhang", "zhang-secret-1").status_code == 401
    assert run_cli("user", "enable", "zhang", config=config).code == 0
    changed = run_cli(
        "user", "set-password", "zhang", "--password-stdin", config=config, stdin="zhang-secret-2\n"
    )
    assert changed.code == 0, changed.err
    with httpx.Client(base_url=live_server.url) as browser:
        assert login(browser, "zhang", "zhang-secret-1").status_code == 401
        assert login(browser, "zhang", "zhang-secret-2").status_code == 200
    missing = run_cli("user", "show", "nobody", config=config)
    assert missing.code == 2 and missing.err.count("\n") == 1
    kinds = [e["event_type"] for e in events(services, "user.created")]
    kinds += [e["event_type"] for e in events(services, "user.disabled")]
    kinds += [e["event_type"] for e in events(services, "user.password_set")]
    assert kinds == ["user.created", "user.disabled", "user.password_set"]


def test_demo_seeds_a_company_that_can_sign_in(
    live_server: LiveServer, run_cli: Callable[..., Any], tmp_path: Path, db_url: str
) -> None:
    services, issuer = live_server.services, live_server.url
    config = cli_config_for(tmp_path, db_url)
    first = run_cli("init", "--demo", config=config)
    assert first.code == 0, first.err
    secrets_found = dict(re.findall(r"client_id=(\S+) client_secret=(\S+)", first.out))
    assert set(secrets_found) == {"oa", "reimburse"}
    passwords = dict(re.findall(r"demo user (\w+) .*: password (\S+)", first.out))
    assert set(passwords) == {"alice", "bob", "carol", "dave", "grace", "kate"}

    identity = services.identity
    alice = identity.get_user_by_username("alice")
    assert alice is not None and alice.display_name == "王小丽"
    assert alice.department_path == "/总部/华东区/销售一部"
    bob = identity.get_user_by_username("bob")
    assert bob is not None
    assert identity.get_department("/总部/华东区").manager_user_id == bob.id  # type: ignore[union-attr]
    carol = identity.get_user_by_username("carol")
    assert carol is not None and identity.user_groups(carol.id) == ["财务审核组"]
    assert identity.get_department("/总部/财务部/费用核算组") is not None
    assert identity.get_department("/总部/信息技术部") is not None
    oa = services.clients.get("oa")
    assert oa is not None and oa.first_party and not oa.public
    assert oa.redirect_uris == ("http://127.0.0.1:8001/callback",)
    assert oa.backchannel_logout_uri == "http://127.0.0.1:8001/backchannel-logout"

    again = run_cli("demo", config=config)
    assert again.code == 0, again.err
    assert "client_secret=" not in again.out and "already registered" in again.out
    assert "already present" in again.out
    assert len(identity.list_users()) == len(passwords)

    # The printed secret and password really work: a full code flow with the demo client.
    from authlib.integrations.httpx_client import OAuth2Client

    client = OAuth2Client(
        client_id="oa",
        client_secret=secrets_found["oa"],
        scope="openid profile",
        redirect_uri="http://127.0.0.1:8001/callback",
        code_challenge_method="S256",
    )
    verifier = "v" * 64
    url, _ = client.create_authorization_url(f"{issuer}/authorize", code_verifier=verifier)
    with httpx.Client(base_url=issuer) as browser:
        done = sign_in_at(browser, follow(browser, url), "alice", passwords["alice"])
    assert done.status_code == 302 and "code" in query_of(done.headers["location"])
    token = client.fetch_token(
        f"{issuer}/token", authorization_response=done.headers["location"], code_verifier=verifier
    )
    assert token["id_token"]
