"""A full disk under the JSON-lines sink: a small tmpfs (root only; skipped otherwise) fills while
events keep coming. The file never holds a partial line, the shipper says it is failing (a
warning in /readyz, not unready), and once space is back it resumes where it stopped: every
event is in the file, in order, and `idhub audit verify --jsonl` passes."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import Actor, EventType

pytestmark = pytest.mark.fault


@pytest.fixture
def small_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = Path(tempfile.mkdtemp(prefix="idhub-full-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


def _grow(mount: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(mount)],
        check=True,
        capture_output=True,
    )


def test_a_full_disk_never_tears_the_sink_and_it_resumes(
    small_disk: Path,
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    tmp_path: Path,
    run_cli: Callable[..., Any],
) -> None:
    sink = small_disk / "audit.jsonl"
    toml = f'[audit]\njsonl_path = "{sink}"\n'
    services = make_services(make_settings(db_url, toml=toml))
    services.migrate()
    shipper = services.audit_shipper
    assert shipper is not None
    delivered = 0
    # Each event is about 400 bytes: 16 KiB fills within a few dozen. Ship small batches
    # so the disk fills part-way through one.
    for i in range(120):
        services.audit.record(
            EventType.SYNC_CHANGE,
            actor=Actor.system("sync"),
            target=f"user-{i:04d}",
            details={"change": "update", "fields": ["display_name", "email"], "n": i},
        )
        if i % 7 == 6:
            delivered += shipper.ship_once()
    delivered += shipper.ship_once()
    error = shipper.errors.get(f"jsonl:{sink}", "")
    assert "No space left on device" in error, shipper.errors
    assert 0 < delivered < 120
    data = sink.read_bytes()
    assert data.endswith(b"\n"), "a partial line was left behind"
    assert len(data.splitlines()) == delivered
    warnings = services.health.assess()
    assert any("audit sink" in line and "failing" in line for line in warnings.warnings)
    assert "audit_sinks" not in warnings.checks

    _grow(small_disk, "1m")
    # A fresh shipper, as after a restart: it resumes at the file's last line.
    again = make_services(make_settings(db_url, toml=toml)).audit_shipper
    assert again is not None
    assert again.ship_once() == 120 - delivered and not again.errors
    config = tmp_path / "cli.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n\n{toml}', encoding="utf-8")
    result = run_cli("audit", "verify", "--jsonl", str(sink), config=config)
    assert result.code == 0, result.out
    assert "120 events (1..120) match the chain" in result.out
