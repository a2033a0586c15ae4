"""Signing keys: sealed at rest, one active per algorithm, rotation, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from idhub.adapters.db import signing_keys
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.errors import ConfigError
from tests.conftest import CliResult


def test_private_keys_are_sealed_and_bound_to_their_row(services: Services) -> None:
    lines: list[str] = []
    services.keys.ensure_active(lines.append)
    assert len(lines) == 3 and all(line.startswith("created") for line in lines)
    again: list[str] = []
    services.keys.ensure_active(again.append)
    assert all("present" in line for line in again)
    with services.engine.connect() as conn:
        rows = conn.execute(select(signing_keys)).all()
    assert len(rows) == 3
    for row in rows:
        blob = bytes(row.private_enc)
        assert b"PRIVATE KEY" not in blob and b'"d"' not in blob
        assert "d" not in row.public_jwk
    # A sealed key moved to another row does not open (AES-GCM binds the kid).
    from idhub.core.crypto import Sealer

    sealer = Sealer(services.settings.require_secret_key())
    with pytest.raises(ConfigError):
        sealer.open(bytes(rows[0].private_enc), aad=rows[1].kid.encode())


def test_another_secret_key_cannot_use_the_keys(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> None:
    first = make_services(make_settings(db_url))
    first.keys.ensure_active(lambda _: None)
    other = make_services(
        make_settings(db_url, env={"IDHUB_SECRET_KEY": "another-key-" + "x" * 30})
    )
    with pytest.raises(ConfigError) as exc:
        other.keys.jwks()
    assert "cannot be decrypted" in str(exc.value)


def test_rotation_per_algorithm_and_expiry(services: Services) -> None:
    services.keys.ensure_active(lambda _: None)
    before = {k.alg: k.kid for k in services.keys.list()}
    [(alg, kid, retired)] = services.keys.rotate(("ES256",))
    assert alg == "ES256" and retired == [before["ES256"]]
    listed = {k.kid: k for k in services.keys.list()}
    assert listed[before["ES256"]].status == "retired" and listed[kid].status == "active"
    assert listed[before["RS256"]].status == "active"
    assert services.keys.signer("ES256")[0] == kid
    assert services.keys.verification_key(before["ES256"]) is not None
    assert len(services.keys.jwks()["keys"]) == 4


def test_keys_cli(run_cli: Callable[..., CliResult], cli_config: Path) -> None:
    init = run_cli("init", config=cli_config)
    assert init.code == 0, init.err
    assert init.out.count("signing key") >= 3
    listed = run_cli("keys", "list", "--json", config=cli_config)
    assert listed.code == 0
    keys = json.loads(listed.out)
    assert sorted(k["alg"] for k in keys) == ["ES256", "EdDSA", "RS256"]
    rotated = run_cli("keys", "rotate", "--alg", "RS256", config=cli_config)
    assert rotated.code == 0 and "RS256: new active key" in rotated.out and "retired" in rotated.out
    statuses = sorted(
        k["status"] for k in json.loads(run_cli("keys", "list", "--json", config=cli_config).out)
    )
    assert statuses == ["active", "active", "active", "retired"]
    assert "in JWKS until" in run_cli("keys", "list", config=cli_config).out
    bad = run_cli("keys", "rotate", "--alg", "HS256", config=cli_config)
    assert bad.code == 2
