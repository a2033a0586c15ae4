"""Decision records held during an outage outlive the process that held them: the spool on
local disk (adapters/decision_spool.py) that core/authz/deferred_audit.py keeps them in.

The holding process is a real one that really dies (SIGKILL, no clean-up of any kind); the
database really goes away and comes back (an SQLite file whose directory is renamed, as in
tests/test_outage_memory.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.decision_spool import FileDecisionSpool
from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.authz.deferred_audit import DeferredDecisionAudit
from idhub.core.clock import SystemClock

SRC = Path(__file__).resolve().parents[1] / "src"

# A process that holds decision records as the decision API does, told what to do on stdin:
# "hold N" (N denials, numbered on), "flush", "die" (SIGKILL to itself). It answers each line.
_HOLDER = r"""
import os, signal, sys
from pathlib import Path
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool
from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.decision_spool import FileDecisionSpool
from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.authz.deferred_audit import DeferredDecisionAudit
from idhub.core.clock import SystemClock

db, spool_dir = sys.argv[1], Path(sys.argv[2])
clock = SystemClock()
audit = SqlAuditLog(create_engine(f"sqlite:///{db}", poolclass=NullPool), clock)
held = DeferredDecisionAudit(audit, clock, spool=FileDecisionSpool(spool_dir))
n = 0
for line in sys.stdin:
    word, _, arg = line.strip().partition(" ")
    if word == "hold":
        for _ in range(int(arg)):
            n += 1
            held.record([PendingEvent(
                EventType.AUTHZ_DECISION, Actor("client", "reimburse"), f"oa:doc{n}", "denied",
                {"n": n, "note": "报销 \u2028"}, RequestContext("10.0.0.7", "ua", f"req-{n}"),
            )])
        print("held", held.held, flush=True)
    elif word == "flush":
        print("flushed", held.flush_once(), flush=True)
    elif word == "die":
        os.kill(os.getpid(), signal.SIGKILL)
"""


class Database:
    """A migrated SQLite file that can be taken away and put back."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template = template
        self.dir = root / "db"
        self.file = self.dir / "idhub.db"
        self.engine: Engine = create_engine(f"sqlite:///{self.file}", poolclass=NullPool)

    def up(self) -> None:
        if self.dir.with_name("db-away").exists():
            self.dir.with_name("db-away").rename(self.dir)
        self.dir.mkdir(exist_ok=True)
        if not self.file.exists():
            shutil.copyfile(self.template, self.file)

    def away(self) -> None:
        self.dir.rename(self.dir.with_name("db-away"))

    def rows(self) -> list[tuple[str, dict[str, object]]]:
        with self.engine.connect() as conn:
            found = conn.execute(text("SELECT target, details FROM audit_events ORDER BY seq"))
            return [(r[0], json.loads(r[1])) for r in found]


class Holder:
    def __init__(self, database: Database, spool: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(database.file), str(spool)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(SRC)},
        )

    def say(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def die(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("die\n")
        self.process.stdin.flush()
        assert self.process.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture
def database(sqlite_template: Path, tmp_path: Path) -> Iterator[Database]:
    db = Database(sqlite_template, tmp_path)
    yield db
    db.engine.dispose()


def _next_process(database: Database, spool: Path) -> tuple[DeferredDecisionAudit, SqlAuditLog]:
    clock = SystemClock()
    audit = SqlAuditLog(database.engine, clock)
    return DeferredDecisionAudit(audit, clock, spool=FileDecisionSpool(spool)), audit


def test_records_held_by_a_process_that_dies_are_appended_by_the_next(
    database: Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    holder = Holder(database, spool)  # the database is not there: every record is held
    assert holder.say("hold 3") == "held 3"
    holder.die()
    (left,) = spool.glob("decisions-*.jsonl")
    assert left.stat().st_mode & 0o077 == 0  # the owner's only

    database.up()
    held, audit = _next_process(database, spool)
    assert held.flush_once() == 3 and held.recovered == 3
    rows = database.rows()
    assert [r[0] for r in rows] == ["oa:doc1", "oa:doc2", "oa:doc3"]  # in the order decided
    assert all(r[1]["decided_at"] > 0 for r in rows)
    assert rows[0][1]["note"] == "报销 \u2028"
    with database.engine.connect() as conn:
        ctx = conn.execute(text("SELECT client_ip, request_id FROM audit_events")).first()
    assert tuple(ctx or ()) == ("10.0.0.7", "req-1")
    assert audit.verify().ok
    assert not list(spool.iterdir())  # settled and removed
    assert held.flush_once() == 0 and len(database.rows()) == 3  # once, not again


def test_what_was_appended_before_the_death_is_not_appended_again(
    database: Database, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    holder = Holder(database, spool)
    assert holder.say("hold 2") == "held 2"
    database.up()
    assert holder.say("flush") == "flushed 2"
    database.away()
    assert holder.say("hold 1") == "held 1"
    holder.die()

    database.up()
    held, audit = _next_process(database, spool)
    assert held.flush_once() == 1
    assert [r[0] for r in database.rows()] == ["oa:doc1", "oa:doc2", "oa:doc3"]
    assert audit.verify().ok


def test_a_live_process_keeps_its_records(database: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    holder = Holder(database, spool)
    try:
        assert holder.say("hold 2") == "held 2"
        database.up()
        other = FileDecisionSpool(spool)
        assert list(other.left_behind()) == []  # locked by a process that is alive
        # The live holder appends its own once the database is back.
        assert holder.say("flush") == "flushed 2"
    finally:
        holder.die()
    held, _ = _next_process(database, spool)
    assert held.flush_once() == 0  # nothing unsettled was left behind: no second copy
    assert len(database.rows()) == 2
    assert not list(spool.glob("decisions-*"))  # and the dead holder's empty file is gone


def test_a_line_cut_short_by_a_crash_is_skipped_with_its_file_and_line(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    holder = Holder(database, spool)
    assert holder.say("hold 2") == "held 2"
    holder.die()
    (left,) = spool.glob("decisions-*.jsonl")
    with left.open("ab") as file:
        file.write(b'{"r":{"type":"authz.decision","actor":["cli')  # a write the crash cut

    database.up()
    held, _ = _next_process(database, spool)
    with caplog.at_level(logging.WARNING, logger="idhub.authz"):
        assert held.flush_once() == 2
    assert f"decision spool {left} line 3: cut short by a crash" in caplog.text
    assert [r[0] for r in database.rows()] == ["oa:doc1", "oa:doc2"]


def test_a_spool_that_cannot_be_written_leaves_the_records_in_memory(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_the_way = tmp_path / "spool"
    in_the_way.write_text("not a directory")
    held, audit = _next_process(database, in_the_way)
    event = PendingEvent(
        EventType.AUTHZ_DECISION, Actor("client", "reimburse"), "oa:doc1", "denied", {"n": 1},
        RequestContext(),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="idhub.authz"):
        held.record([event])  # the database is away too: held, and answered
    assert held.held == 1
    assert "held in memory only, the spool failed" in caplog.text
    database.up()
    assert held.flush_once() == 1 and audit.count() == 1
