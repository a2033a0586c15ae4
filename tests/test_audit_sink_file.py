"""The JSON-lines sink never tears: a failed write is cut back, a torn tail (a crash) is cut on
the next round and redelivered, and `idhub audit verify --jsonl FILE` checks every line of the
file against the chain (present, in order, hashes matching), not only its last line."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idhub.adapters.audit_sinks import JsonlFileSink
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import Actor, EventType


def _sink_services(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    sink: Path,
) -> Services:
    services = make_services(make_settings(db_url, toml=f'[audit]\njsonl_path = "{sink}"\n'))
    services.migrate()
    return services


def _record(services: Services, count: int, prefix: str = "u") -> None:
    for i in range(count):
        services.audit.record(
            EventType.SYNC_CHANGE, actor=Actor.system("sync"), target=f"{prefix}{i}"
        )


def _seqs(path: Path) -> list[int]:
    return [json.loads(line)["seq"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_torn_tail_is_cut_and_the_events_in_it_delivered_again(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    tmp_path: Path,
    run_cli: Callable[..., Any],
) -> None:
    sink = tmp_path / "audit.jsonl"
    services = _sink_services(make_settings, make_services, db_url, sink)
    _record(services, 3)
    shipper = services.audit_shipper
    assert shipper is not None and shipper.ship_once() == 3
    _record(services, 2, "v")
    # A crash mid-write: half of event 4's line reached the file, without its newline.
    line4 = json.dumps(
        services.audit_log.search(after_seq=3, limit=1, newest_first=False)[0].to_dict()
    )
    with sink.open("ab") as handle:
        handle.write(line4.encode()[: len(line4) // 2])
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n\n[audit]\njsonl_path = "{sink}"\n', encoding="utf-8"
    )
    torn = run_cli("audit", "verify", "--jsonl", str(sink), config=config)
    assert torn.code == 1 and "line 4 is incomplete (a torn write)" in torn.out

    # The restarted shipper (a fresh process) cuts the tail and resumes at event 4.
    restarted = _sink_services(make_settings, make_services, db_url, sink).audit_shipper
    assert restarted is not None and restarted.ship_once() == 2
    assert _seqs(sink) == [1, 2, 3, 4, 5]
    result = run_cli("audit", "verify", "--jsonl", str(sink), config=config)
    assert result.code == 0, result.out
    assert f"JSON-lines file {sink} OK: 5 events (1..5) match the chain" in result.out


def test_a_failed_write_leaves_no_partial_line(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = tmp_path / "audit.jsonl"
    services = _sink_services(make_settings, make_services, sqlite_db_url, sink)
    _record(services, 2)
    shipper = services.audit_shipper
    assert shipper is not None and shipper.ship_once() == 2
    _record(services, 3, "v")
    # The disk fills after 40 bytes of the next batch were written (the real full disk is
    # in tests/test_faults_sink.py; this runs without root).
    real_write = os.write

    def short_write(fd: int, data: Any) -> int:
        if fd > 2 and os.path.samefile(f"/proc/self/fd/{fd}", sink):
            real_write(fd, bytes(data[:40]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    assert shipper.ship_once() == 0
    assert "No space left on device" in shipper.errors[f"jsonl:{sink}"]
    assert sink.read_bytes().endswith(b"\n") and _seqs(sink) == [1, 2]
    monkeypatch.setattr(os, "write", real_write)
    assert shipper.ship_once() == 3 and not shipper.errors
    assert _seqs(sink) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("drop_middle", "line 3: event(s) 3 are missing before event 4"),
        ("edit", "line 2:"),
        ("swap", "line 2:"),
        ("chain_differs", "differs from the live chain"),
    ],
)
def test_verify_jsonl_finds_each_kind_of_damage(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    tmp_path: Path,
    damage: str,
    expected: str,
) -> None:
    sink = tmp_path / "audit.jsonl"
    services = _sink_services(make_settings, make_services, sqlite_db_url, sink)
    _record(services, 5)
    shipper = services.audit_shipper
    assert shipper is not None and shipper.ship_once() == 5
    assert services.audit_sink_file_check(sink).ok
    lines = sink.read_text(encoding="utf-8").splitlines()
    if damage == "drop_middle":
        del lines[2]
    elif damage == "edit":
        event = json.loads(lines[1])
        event["target"] = "someone-else"
        lines[1] = json.dumps(event)
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        # The file is intact but the database's event 3 is not the one the sink saw.
        with services.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET hash = :h WHERE seq = 3"), {"h": "0" * 64})
    sink.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = services.audit_sink_file_check(sink)
    assert not report.ok and report.problem is not None
    assert expected in report.problem, report.problem


def test_verify_jsonl_reports_a_file_behind_and_one_missing_its_start(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    sqlite_db_url: str,
    tmp_path: Path,
) -> None:
    sink = tmp_path / "audit.jsonl"
    services = _sink_services(make_settings, make_services, sqlite_db_url, sink)
    _record(services, 4)
    shipper = services.audit_shipper
    assert shipper is not None and shipper.ship_once() == 4
    _record(services, 2, "v")
    behind = services.audit_sink_file_check(sink)
    assert behind.ok and behind.behind == 2 and (behind.first_seq, behind.last_seq) == (1, 4)
    lines = sink.read_text(encoding="utf-8").splitlines()
    sink.write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")
    missing = services.audit_sink_file_check(sink)
    assert missing.problem == "line 1 is event 2: the live events before it are missing"
    assert not JsonlFileSink(tmp_path / "none.jsonl").repair()
