"""A directory sync killed with SIGKILL in the middle of applying its changes leaves every
applied change with its `sync.change` event (each batch commits changes and events together),
the audit chain verifies, and the next run completes the rest.

A real `idhub sync ldap` subprocess against a real slapd, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy import create_engine, func, select

from idhub.adapters.db import audit_events, users
from idhub.bootstrap import Services
from idhub.config import load_settings
from tests.conftest import REPO, TEST_SECRET_KEY
from tests.slapd import SOURCE_ENV, Slapd, source_toml

pytestmark = pytest.mark.slapd

PEOPLE = 500


def _config(tmp_path: Path, db_url: str, ldap: Slapd) -> Path:
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(TEST_SECRET_KEY + "\n", encoding="utf-8")
    config = tmp_path / "idhub.toml"
    config.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n\n'
        # Small batches: many commits, so the kill lands between and inside them.
        + source_toml(ldap, extra="batch_size = 5"),
        encoding="utf-8",
    )
    return config


def _idhub(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "idhub", "-c", str(config), *args]


def test_sync_killed_mid_apply_leaves_every_applied_change_with_its_event(
    make_slapd: Callable[..., Slapd], db_url: str, tmp_path: Path
) -> None:
    ldap = make_slapd(users=PEOPLE, departments=30, groups=4, hash_passwords=False)
    config = _config(tmp_path, db_url, ldap)
    env = {**os.environ, **SOURCE_ENV}
    engine = create_engine(db_url)

    def counts() -> tuple[int, int]:
        with engine.connect() as conn:
            people = int(conn.execute(select(func.count()).select_from(users)).scalar_one())
            events = int(
                conn.execute(
                    select(func.count()).where(
                        audit_events.c.event_type == "sync.change",
                        audit_events.c.target.like("user:%"),
                    )
                ).scalar_one()
            )
        return people, events

    def users_now() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    errors = (tmp_path / "sync.err").open("w+b")
    sync = subprocess.Popen(
        _idhub(config, "sync", "ldap", "corp", "--full"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        deadline = time.monotonic() + 60
        applied = 0
        while time.monotonic() < deadline and sync.poll() is None:
            applied = users_now()
            if applied > 0:
                break
            time.sleep(0.002)
        assert sync.poll() is None, f"the sync ended before it could be killed: {_err(errors)}"
        # The first batch is committed and the rest are on their way: kill it now.
        sync.send_signal(signal.SIGKILL)
        sync.wait(10)
        assert sync.returncode == -signal.SIGKILL

        people, events = counts()
        assert 0 < people < PEOPLE, f"not killed mid-apply ({people} of {PEOPLE} applied)"
        assert people == events, "applied changes without their sync.change events"
        verify = subprocess.run(
            _idhub(config, "audit", "verify"), env=env, capture_output=True, text=True, timeout=60
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # The next run (in-process) finds the dead holder's lease and applies what is left.
        services = Services(load_settings(config, env=env, cwd=tmp_path))
        try:
            services.directory_sync("corp").run(full=True)
            assert counts() == (PEOPLE, PEOPLE)
            assert services.audit_log.verify().ok
        finally:
            services.close()
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.wait(10)
        errors.close()
        engine.dispose()


def _err(errors: BinaryIO) -> str:
    errors.seek(0)
    return errors.read().decode(errors="replace")[-2000:]
