"""`idhub directory test`, `idhub sync ldap` (dry run, JSON, brake) and `idhub sync status`,
plus kill -9 in the middle of a run: the next run converges with no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select

from idhub.adapters.db import sync_runs, users
from tests.slapd import SERVICE_PASSWORD, Slapd, source_toml

pytestmark = pytest.mark.slapd


def _config(cli_config: Path, ldap: Slapd, extra: str = "") -> Path:
    secret = cli_config.parent / "ldap.pw"
    secret.write_text(SERVICE_PASSWORD + "\n", encoding="utf-8")
    table = source_toml(ldap, extra=extra).replace(
        'bind_password_env = "LDAP_BIND_PASSWORD"', f'bind_password_file = "{secret}"'
    )
    cli_config.write_text(cli_config.read_text(encoding="utf-8") + "\n" + table, encoding="utf-8")
    return cli_config


def _db(config: Path) -> Any:
    url = next(
        line.split('"')[1]
        for line in config.read_text().splitlines()
        if line.startswith('url = "sqlite')
    )
    return create_engine(url)


def _count(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(users)).scalar_one())


def test_directory_test_shows_mapped_samples(
    slapd_company: Slapd, cli_config: Path, run_cli: Callable[..., Any]
) -> None:
    config = _config(cli_config, slapd_company)
    result = run_cli("directory", "test", "corp", "--sample", "3", config=config)
    assert result.code == 0, result.err
    assert f"connected to {slapd_company.url}" in result.out
    assert "u000000" in result.out and "/总部" in result.out
    assert SERVICE_PASSWORD not in result.out + result.err
    as_json = json.loads(run_cli("directory", "test", "corp", "--json", config=config).out)
    assert len(as_json["samples"]) == 5 and as_json["bound_as"].endswith(
        "ou=services,dc=example,dc=com"
    )

    missing = run_cli("directory", "test", "nope", config=config)
    assert missing.code == 2 and "no LDAP source named 'nope'" in missing.err


def test_dry_run_prints_the_plan_and_changes_nothing(
    slapd_company: Slapd, cli_config: Path, run_cli: Callable[..., Any]
) -> None:
    config = _config(cli_config, slapd_company)
    engine = _db(config)
    text = run_cli("sync", "ldap", "corp", "--dry-run", "--limit", "5", config=config)
    assert text.code == 0, text.err
    people = slapd_company.company.people  # type: ignore[attr-defined]
    assert "plan (dry run, nothing changed)" in text.out
    assert "+ create   u000000" in text.out and f"and {len(people) - 5} more" in text.out
    assert "+ department /总部\n" in text.out and "+ department /总部/人力资源部\n" in text.out
    assert _count(engine) == 0

    as_json = json.loads(run_cli("sync", "ldap", "corp", "--dry-run", "--json", config=config).out)
    assert as_json["status"] == "planned" and as_json["counts"]["create"] == len(people)
    first = as_json["changes"][0]
    assert first["kind"] == "create" and first["changes"]["username"] == [None, first["username"]]
    assert _count(engine) == 0

    done = run_cli("sync", "ldap", "corp", config=config)
    assert done.code == 0 and "succeeded" in done.out
    assert _count(engine) == len(people)
    status = run_cli("sync", "status", config=config)
    assert "ldap:corp" in status.out and "succeeded" in status.out
    runs = json.loads(run_cli("sync", "status", "--json", config=config).out)
    assert runs[0]["last_run"]["status"] == "succeeded"
    assert runs[0]["last_run"]["counts"]["create"] == len(people)


def test_brake_from_the_cli(
    make_slapd: Callable[..., Slapd], cli_config: Path, run_cli: Callable[..., Any]
) -> None:
    ldap = make_slapd(users=30, departments=5, groups=2)
    config = _config(cli_config, ldap)
    assert run_cli("sync", "ldap", "corp", config=config).code == 0
    admin = ldap.admin()
    for person in ldap.company.people[5:]:  # type: ignore[attr-defined]
        admin.delete(person.dn)
    admin.unbind()
    refused = run_cli("sync", "ldap", "corp", "--full", config=config)
    assert refused.code == 2 and "would disable" in refused.err and "--force" in refused.err
    preview = run_cli("sync", "ldap", "corp", "--full", "--dry-run", config=config)
    assert preview.code == 1
    assert "- disable  u000005" in preview.out and "gone from the directory" in preview.out
    assert "a real run would stop" in preview.out
    forced = run_cli("sync", "ldap", "corp", "--full", "--force", config=config)
    assert forced.code == 0 and "forced past the brake" in forced.out


def test_kill_9_mid_run_then_rerun_converges(
    make_slapd: Callable[..., Slapd], cli_config: Path, run_cli: Callable[..., Any]
) -> None:
    ldap = make_slapd(users=1500, departments=30, groups=10)
    total = len(ldap.company.people)  # type: ignore[attr-defined]
    # Small batches so the run spends a while writing and the kill lands in the middle.
    config = _config(cli_config, ldap, extra="batch_size = 10")
    engine = _db(config)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "sync", "ldap", "corp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 60
    written = 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                written = _count(engine)
            except Exception:
                written = 0
            if written >= 100:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()
    partial = _count(engine)
    assert 0 < partial < total
    with engine.connect() as conn:
        before = {r.external_id: r.sub for r in conn.execute(select(users))}
        stuck = conn.execute(select(sync_runs.c.status)).scalars().all()
    assert stuck == ["running"]

    again = run_cli("sync", "ldap", "corp", config=config)
    assert again.code == 0, again.err
    with engine.connect() as conn:
        rows = list(conn.execute(select(users)))
        statuses = sorted(conn.execute(select(sync_runs.c.status)).scalars().all())
    assert len(rows) == total
    assert len({r.external_id for r in rows}) == total and len({r.username for r in rows}) == total
    # Users written before the kill kept their subject.
    assert all(before[r.external_id] == r.sub for r in rows if r.external_id in before)
    assert statuses == ["failed", "succeeded"]
    engine.dispose()
