"""`idhub audit tail | search | export | verify | archive` through the real CLI, on SQLite
and PostgreSQL; `tail --follow` as a separate process."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from idhub.bootstrap import Services
from idhub.config import load_settings
from idhub.core.audit import Actor, EventType, RequestContext

REPO = Path(__file__).resolve().parents[1]
KEY = "test-secret-key-0123456789abcdefghijklmnop"
DAY = 86400.0
NOW = 1_768_464_000.0  # 2026-01-15T08:00Z: the seeded days are in the past


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    (var / "secret.key").write_text(KEY + "\n", encoding="utf-8")
    path = tmp_path / "idhub.toml"
    path.write_text(
        f'var_dir = "{var}"\n\n[database]\nurl = "{db_url}"\n\n'
        f'[policy]\ndir = "{REPO / "policies"}"\nwatch = false\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def log_services(config: Path, make_services: Callable[..., Services]) -> Services:
    from idhub.core.clock import FrozenClock

    return make_services(load_settings(config, env={}), clock=FrozenClock(NOW - 10 * DAY))


def _seed(services: Services) -> None:
    clock: Any = services.clock
    for day in range(10):
        services.audit.record(
            EventType.LOGIN_FAILED,
            actor=Actor("user", "alice"),
            target="client:oa",
            outcome="failure",
            details={"reason": "bad_password", "day": day},
            ctx=RequestContext("10.1.1.1", "Firefox", f"req-{day:05d}"),
        )
        services.audit.record(
            EventType.TOKEN_ISSUED,
            actor=Actor("client", "reimburse"),
            target="reimburse",
            details={"grant_type": "client_credentials", "jti": f"j{day}"},
        )
        clock.advance(DAY)


def test_search_filters_and_json(run_cli: Any, config: Path, log_services: Services) -> None:
    _seed(log_services)
    result = run_cli("audit", "search", "--type", "login.failed", "--json", config=config)
    assert result.code == 0, result.err
    events = json.loads(result.out)
    assert len(events) == 10 and {e["event_type"] for e in events} == {"login.failed"}
    assert events[0]["seq"] > events[-1]["seq"]  # newest first

    since, until = "2026-01-06", "2026-01-08T00:00:00Z"
    result = run_cli("audit", "search", "--actor", "client:reimburse", "--json",
                     "--since", since, "--until", until, config=config)  # fmt: skip
    found = json.loads(result.out)
    assert found and all(e["actor_id"] == "reimburse" for e in found)
    assert all("2026-01-06" <= e["time"] < "2026-01-08" for e in found)

    result = run_cli("audit", "search", "--type", "token.*", "--target", "reimburse",
                     "--limit", "3", config=config)  # fmt: skip
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "(UTC)"]
    assert len(lines) == 2 + 3 and all("token.issued" in line for line in lines[2:])

    result = run_cli("audit", "search", "--outcome", "failure", "--actor", "alice", config=config)
    assert len(result.out.splitlines()) == 2 + 10

    result = run_cli("audit", "search", "--actor", "nobody", config=config)
    assert "no matching audit events" in result.out


def test_bad_filters_are_one_line_errors(
    run_cli: Any, config: Path, log_services: Services
) -> None:
    result = run_cli("audit", "search", "--type", "login.maybe", config=config)
    assert result.code == 2 and "unknown audit event type 'login.maybe'" in result.err
    assert "Traceback" not in result.err
    result = run_cli("audit", "search", "--since", "yesterday-ish", config=config)
    assert result.code == 2 and "--since" in result.err and "is not a time" in result.err
    result = run_cli("audit", "archive", "--before", "2999-01-01", config=config)
    assert result.code == 2 and "future" in result.err


def test_tail_shows_newest_in_order(run_cli: Any, config: Path, log_services: Services) -> None:
    _seed(log_services)
    result = run_cli("audit", "tail", "-n", "3", "--json", config=config)
    seqs = [json.loads(line)["seq"] for line in result.out.splitlines()]
    assert seqs == [18, 19, 20]


def test_export_jsonl_keeps_hashes(
    run_cli: Any, config: Path, log_services: Services, tmp_path: Path
) -> None:
    _seed(log_services)
    out = tmp_path / "export.jsonl"
    result = run_cli("audit", "export", "--since", "2026-01-08", "--format", "jsonl",
                     "-o", str(out), config=config)  # fmt: skip
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    assert len(lines) == 14 and all(e["time"] >= "2026-01-08" for e in lines)
    assert all(len(e["hash"]) == 64 and len(e["prev_hash"]) == 64 for e in lines)
    assert "exported 14 events" in result.err
    to_stdout = run_cli("audit", "export", "--type", "token.issued", config=config)
    assert len(to_stdout.out.splitlines()) == 10


def test_verify_reports_ok_and_the_first_break(
    run_cli: Any, config: Path, log_services: Services
) -> None:
    _seed(log_services)
    result = run_cli("audit", "verify", config=config)
    assert result.code == 0, result.out + result.err
    assert "live chain OK: 20 events (events 1..20)" in result.out
    head = next(line for line in result.out.splitlines() if line.startswith("head: "))[6:]
    assert run_cli("audit", "verify", "--head", head, config=config).code == 0

    with log_services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE seq >= 19"))
    # Cutting the end off keeps a valid chain; the remembered head notices.
    result = run_cli("audit", "verify", "--head", head, config=config)
    assert result.code == 1
    assert "event 20 existed but the chain now ends at 18" in result.out

    with log_services.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET target = 'client:erp' WHERE seq = 9"))
    result = run_cli("audit", "verify", config=config)
    assert result.code == 1
    assert "BROKEN at event 9" in result.out and "edited" in result.out


def test_tail_follow_prints_new_events(config: Path, log_services: Services) -> None:
    _seed(log_services)
    proc = subprocess.Popen(
        [sys.executable, "-m", "idhub", "-c", str(config), "audit", "tail", "-n", "1",
         "--follow", "--json", "--interval", "0.1", "--exit-after", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["seq"] == 20
        time.sleep(0.3)
        for i in range(3):
            log_services.audit.record(EventType.KEY_ROTATED, actor=Actor.system(), target=f"k{i}")
        got = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [e["target"] for e in got] == ["k0", "k1", "k2"]
        assert [e["seq"] for e in got] == [21, 22, 23]
    finally:
        proc.kill()
        proc.wait(10)


def test_archive_moves_old_events_and_everything_still_verifies(
    run_cli: Any, config: Path, log_services: Services, tmp_path: Path
) -> None:
    _seed(log_services)
    result = run_cli("audit", "archive", "--before", "2026-01-10", config=config)
    assert result.code == 0, result.err
    assert "archived 10 events (1..10)" in result.out
    path = Path(result.out.split(" to ", 1)[1].splitlines()[0])
    assert path.exists() and path.name == "audit-000000000001-000000000010.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    assert lines[0]["format"] == "idhub-audit-archive" and lines[-1]["end"] is True
    assert [e["seq"] for e in lines[1:-1]] == list(range(1, 11))
    assert log_services.audit_log.count() == 20 - 10 + 1  # the archive records itself
    archived = log_services.audit_log.search(limit=1)[0]
    assert archived.event_type == "audit.archived" and archived.details["last_seq"] == 10

    result = run_cli("audit", "verify", "--archive", str(path), config=config)
    assert result.code == 0, result.out
    assert "live chain OK: 11 events (events 11..21)" in result.out
    assert "linked: the live chain continues at event 11" in result.out

    # A second archive; the first is now linked through the audit.archived event.
    log_services.clock.advance(30 * DAY)  # type: ignore[attr-defined]
    log_services.audit.record(EventType.KEY_CREATED, actor=Actor.system())
    second_out = tmp_path / "second.jsonl.gz"
    result = run_cli("audit", "archive", "--before", "2026-02-01", "-o", str(second_out),
                     config=config)  # fmt: skip
    # Event 21 (the first archive's own record) is newer than the cut, so the stretch ends at 20.
    assert result.code == 0 and "archived 10 events (11..20)" in result.out
    result = run_cli("audit", "verify", "--archive", str(path), "--archive", str(second_out),
                     config=config)  # fmt: skip
    assert result.code == 0, result.out
    assert result.out.count(" OK") == 3
    assert "linked: live event 21 (audit.archived) names its last hash" in result.out

    # Nothing older left: a second run is a no-op, not an error.
    again = run_cli("audit", "archive", "--before", "2026-01-10", config=config)
    assert again.code == 0 and "nothing archived" in again.out


def test_tampered_or_truncated_archive_is_detected(
    run_cli: Any, config: Path, log_services: Services, tmp_path: Path
) -> None:
    _seed(log_services)
    result = run_cli("audit", "archive", "--before", "2026-01-10", config=config)
    path = Path(result.out.split(" to ", 1)[1].splitlines()[0])
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()

    def write(name: str, content: list[str]) -> Path:
        target = tmp_path / name
        with gzip.open(target, "wt", encoding="utf-8") as handle:
            handle.write("\n".join(content) + "\n")
        return target

    edited = json.loads(lines[5])
    edited["details"]["reason"] = "unknown_user"
    cases = {
        "edited": ([*lines[:5], json.dumps(edited), *lines[6:]], "line 6: event 5 does not match"),
        "deleted": (lines[:5] + lines[6:], "missing before event 6"),
        "truncated": (lines[:-3], "end marker is missing"),
        "reordered": ([*lines[:4], lines[5], lines[4], *lines[6:]], "line 5"),
    }
    for name, (content, expected) in cases.items():
        result = run_cli("audit", "verify", "--archive", str(write(name, content)), config=config)
        assert result.code == 1, name
        assert "BROKEN" in result.out and expected in result.out, (name, result.out)

    # An intact archive of some other chain is not linked to this one.
    with log_services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events WHERE event_type = 'audit.archived'"))
        conn.execute(text("UPDATE audit_anchor SET prev_hash = :h"), {"h": "c" * 64})
    result = run_cli("audit", "verify", "--archive", str(path), config=config)
    assert result.code == 1 and "nothing links it to the live chain" in result.out


def test_archive_refuses_a_broken_chain(run_cli: Any, config: Path, log_services: Services) -> None:
    _seed(log_services)
    with log_services.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor_id = 'bob' WHERE seq = 3"))
    result = run_cli("audit", "archive", "--before", "2026-01-10", config=config)
    assert result.code == 2 and "chain is broken at event 3" in result.err
    assert log_services.audit_log.count() == 20
    assert not list((config.parent / "var" / "audit-archive").glob("*"))
