"""`idhub client ...` end to end through the CLI entry point."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from joserfc import jwk

from tests.conftest import CliResult


def test_add_show_list_rotate_remove(run_cli: Callable[..., CliResult], cli_config: Path) -> None:
    assert run_cli("init", config=cli_config).code == 0
    added = run_cli(
        "client",
        "add",
        "oa",
        "--name",
        "OA 系统",
        "--redirect-uri",
        "http://127.0.0.1:8001/cb",
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--grant",
        "token_exchange",
        "--allowed-audience",
        "reimburse",
        "--first-party",
        "--json",
        config=cli_config,
    )
    assert added.code == 0, added.err
    data = json.loads(added.out)
    assert data["client_id"] == "oa" and len(data["client_secret"]) >= 40
    assert data["redirect_uris"] == ["http://127.0.0.1:8001/cb"]
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in data["grant_types"]
    shown = json.loads(run_cli("client", "show", "oa", "--json", config=cli_config).out)
    assert shown["client_id"] == "oa" and "client_secret" not in shown
    assert shown["name"] == "OA 系统" and shown["allowed_audiences"] == ["reimburse"]
    assert "oa" in run_cli("client", "list", config=cli_config).out
    rotated = run_cli("client", "rotate-secret", "oa", "--json", config=cli_config)
    assert json.loads(rotated.out)["client_secret"] != data["client_secret"]
    human = run_cli("client", "add", "svc", "--scope", "authz", config=cli_config)
    assert human.code == 0 and "client secret:" in human.out and "client_credentials" in human.out
    assert run_cli("client", "remove", "oa", config=cli_config).code == 0
    missing = run_cli("client", "show", "oa", config=cli_config)
    assert missing.code == 2 and "no client 'oa'" in missing.err
    assert missing.err.count("\n") <= 1 and "Traceback" not in missing.err


def test_errors_are_one_line(
    run_cli: Callable[..., CliResult], cli_config: Path, tmp_path: Path
) -> None:
    assert run_cli("init", config=cli_config).code == 0
    bad_uri = run_cli("client", "add", "x", "--redirect-uri", "not-a-uri", config=cli_config)
    assert bad_uri.code == 2 and "redirect URI" in bad_uri.err and "Traceback" not in bad_uri.err
    assert run_cli("client", "add", "x", config=cli_config).code == 0
    dup = run_cli("client", "add", "x", config=cli_config)
    assert dup.code == 2 and "already exists" in dup.err
    jwks_file = tmp_path / "bad.json"
    jwks_file.write_text("{\n  nope", encoding="utf-8")
    bad_jwks = run_cli(
        "client",
        "add",
        "erp",
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwks_file),
        config=cli_config,
    )
    assert bad_jwks.code == 2 and f"{jwks_file}:2" in bad_jwks.err
    private = jwk.generate_key("EC", "P-256")
    jwks_file.write_text(json.dumps({"keys": [private.as_dict(private=True)]}), encoding="utf-8")
    leaked = run_cli(
        "client",
        "add",
        "erp",
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwks_file),
        config=cli_config,
    )
    assert leaked.code == 2 and "private key" in leaked.err
    jwks_file.write_text(json.dumps({"keys": [private.as_dict(private=False)]}), encoding="utf-8")
    good = run_cli(
        "client",
        "add",
        "erp",
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwks_file),
        "--json",
        config=cli_config,
    )
    assert good.code == 0 and json.loads(good.out)["client_secret"] is None
