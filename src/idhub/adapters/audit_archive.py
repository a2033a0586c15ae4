"""Retention: old events move out of the live table into a gzip JSON-lines file that keeps
their chain hashes, and the live chain's anchor moves up so it still verifies on its own.

File layout (one JSON object per line):
  1. header  {"format": "idhub-audit-archive", "version": 1, "first_seq", "prev_hash", ...}
  2. events  the export form of each event (`AuditEvent.to_dict`), in chain order
  3. trailer {"end": true, "count", "last_seq", "last_hash"}  (a truncated file has none)

An archive links to the live chain three ways: the anchor points at its last hash (newest
archive), an `audit.archived` event in the live chain names its last seq and hash, or the
next archive given alongside starts where it ends.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from idhub.adapters.audit_store import SqlAuditLog
from idhub.adapters.db import audit_anchor, audit_events
from idhub.core.audit import (
    Actor,
    AuditEvent,
    AuditFilter,
    EventType,
    PendingEvent,
    iso_time,
)
from idhub.core.audit_chain import (
    GENESIS_HASH,
    ChainBreak,
    ChainVerifier,
    canonical_details,
    event_row,
)
from idhub.core.clock import Clock
from idhub.errors import AuditError, InvalidInput

FORMAT = "idhub-audit-archive"
VERSION = 1
_CHUNK = 5_000


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    first_seq: int
    last_seq: int
    count: int
    last_hash: str


@dataclass
class ArchiveReport:
    path: Path
    first_seq: int | None = None
    last_seq: int | None = None
    count: int = 0
    prev_hash: str = GENESIS_HASH
    last_hash: str = GENESIS_HASH
    problem: str | None = None
    linked_by: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None and self.linked_by is not None


class AuditArchives:
    """The archive side of one log: where new archives go, and the checks of archive files."""

    def __init__(self, log: SqlAuditLog, *, directory: Path, clock: Clock) -> None:
        self._log = log
        self._directory = directory
        self._clock = clock

    def archive_before(
        self, before: float, *, actor: Actor, output: Path | None = None
    ) -> ArchiveResult | None:
        """See `archive_before`; the archive goes to `output` or a new file in the directory."""
        return archive_before(
            self._log,
            before=before,
            directory=self._directory,
            clock=self._clock,
            actor=actor,
            output=output,
        )

    def verify(self, paths: Sequence[Path]) -> list[ArchiveReport]:
        return verify_archives(self._log, paths)


def archive_before(
    log: SqlAuditLog,
    *,
    before: float,
    directory: Path,
    clock: Clock,
    actor: Actor,
    output: Path | None = None,
) -> ArchiveResult | None:
    """Moves every event of the chain's oldest stretch with `ts < before` into an archive.
    Returns None when there is nothing to move. The chain stretch must verify first: a
    broken chain is never archived (the evidence would leave the table)."""
    anchor = log.anchor()
    last_seq = _cut(log, before)
    if last_seq is None or last_seq < anchor.first_seq:
        return None
    if output is None:
        output = directory / f"audit-{anchor.first_seq:012d}-{last_seq:012d}.jsonl.gz"
    if output.exists():
        raise InvalidInput(f"{output} exists already; archives are never overwritten")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    verifier = ChainVerifier(first_seq=anchor.first_seq, prev_hash=anchor.prev_hash)
    count = 0
    try:
        # Owner-only from the first byte: the trail names users, addresses and clients.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        with gzip.open(partial, "wt", encoding="utf-8", compresslevel=6) as handle:
            header = {
                "format": FORMAT,
                "version": VERSION,
                "canonical": 1,
                "first_seq": anchor.first_seq,
                "prev_hash": anchor.prev_hash,
                "before": iso_time(before),
                "created_at": iso_time(clock.now()),
            }
            handle.write(json.dumps(header) + "\n")
            for chunk in _chunks(
                log.iter_events(after_seq=anchor.first_seq - 1, until_seq=last_seq)
            ):
                if not verifier.feed([event_row(e) for e in chunk]):
                    problem = verifier.report().problem
                    assert problem is not None
                    raise AuditError(
                        f"not archiving: the chain is broken at event {problem.seq}: "
                        f"{problem.message}"
                    )
                for event in chunk:
                    handle.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                count += len(chunk)
            report = verifier.report()
            if report.last_seq != last_seq:
                raise AuditError(
                    f"not archiving: expected events up to {last_seq}, found {report.last_seq}"
                )
            trailer = {
                "end": True,
                "count": count,
                "last_seq": last_seq,
                "last_hash": report.head_hash,
            }
            handle.write(json.dumps(trailer) + "\n")
        with open(partial, "rb") as raw:
            os.fsync(raw.fileno())
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    last_hash = report.head_hash
    try:
        _move(log, anchor.first_seq, last_seq, last_hash, output, clock, actor, count)
    except BaseException:
        # Nothing left the table; the file would only confuse a later run.
        output.unlink(missing_ok=True)
        raise
    return ArchiveResult(output, anchor.first_seq, last_seq, count, last_hash)


def _cut(log: SqlAuditLog, before: float) -> int | None:
    """The last seq of the oldest stretch older than `before`. Replicas' clocks differ a
    little, so ts is not strictly monotonic; the cut stops at the first newer event."""
    with log.reading() as conn:
        first_newer = conn.execute(
            select(func.min(audit_events.c.seq)).where(audit_events.c.ts >= before)
        ).scalar()
        if first_newer is not None:
            return int(first_newer) - 1
        last = conn.execute(select(func.max(audit_events.c.seq))).scalar()
        return int(last) if last is not None else None


def _move(
    log: SqlAuditLog,
    first_seq: int,
    last_seq: int,
    last_hash: str,
    output: Path,
    clock: Clock,
    actor: Actor,
    count: int,
) -> None:
    try:
        with log.locked() as conn:
            current = log.anchor_in(conn)
            row = conn.execute(
                select(audit_events.c.hash).where(audit_events.c.seq == last_seq)
            ).first()
            if current.first_seq != first_seq or row is None or row[0] != last_hash:
                raise AuditError("the audit log changed while archiving (another archive ran?)")
            conn.execute(delete(audit_events).where(audit_events.c.seq <= last_seq))
            values = {
                "first_seq": last_seq + 1,
                "prev_hash": last_hash,
                "archived_at": clock.now(),
                "archive_file": str(output),
            }
            if conn.execute(select(audit_anchor.c.id)).first() is None:
                conn.execute(insert(audit_anchor).values(id=1, **values))
            else:
                conn.execute(update(audit_anchor).values(**values))
            appended = log.record_in(
                conn,
                [
                    PendingEvent(
                        EventType.AUDIT_ARCHIVED,
                        actor,
                        target=output.name,
                        details={
                            "file": output.name,
                            "first_seq": first_seq,
                            "last_seq": last_seq,
                            "count": count,
                            "last_hash": last_hash,
                        },
                    )
                ],
            )
    except SQLAlchemyError as exc:
        raise AuditError(f"archiving failed, nothing was removed: {exc}") from exc
    appended.committed()


def _chunks(events: Iterator[AuditEvent]) -> Iterator[list[AuditEvent]]:
    chunk: list[AuditEvent] = []
    for event in events:
        chunk.append(event)
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ------------------------------------------------------------------ verification


def read_archive(path: Path) -> ArchiveReport:
    """Checks one archive on its own: format, an unbroken chain, a matching trailer."""
    report = ArchiveReport(path=path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            _check_lines(handle, report)
    except FileNotFoundError:
        raise InvalidInput(f"archive {path} does not exist") from None
    except _Bad as exc:
        report.problem = str(exc)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        report.problem = f"cannot read the archive: {exc} (truncated or not a gzip file?)"
    return report


def _check_lines(lines: Any, report: ArchiveReport) -> None:
    header = _json(next(lines, ""), 1)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        report.problem = "line 1: not an idhub audit archive header"
        return
    if header.get("version") != VERSION:
        report.problem = f"line 1: archive version {header.get('version')} is not supported"
        return
    report.first_seq, report.prev_hash = int(header["first_seq"]), str(header["prev_hash"])
    verifier = ChainVerifier(first_seq=report.first_seq, prev_hash=report.prev_hash)
    trailer: dict[str, Any] | None = None
    for number, line in enumerate(lines, start=2):
        data = _json(line, number)
        if trailer is not None:
            report.problem = f"line {number}: data after the end marker"
            return
        if not isinstance(data, dict):
            report.problem = f"line {number}: not a JSON object"
            return
        if data.get("end") is True:
            trailer = data
            continue
        try:
            event = AuditEvent.from_dict(data)
            row = event_row(event)
        except (KeyError, TypeError, ValueError) as exc:
            report.problem = f"line {number}: not an audit event ({exc})"
            return
        if row[10] != canonical_details(data.get("details") or {}):
            report.problem = f"line {number}: details are not in canonical form"
            return
        if not verifier.feed([row]):
            problem: ChainBreak | None = verifier.report().problem
            assert problem is not None
            report.problem = f"line {number}: {problem.message}"
            return
    result = verifier.report()
    report.count, report.last_hash = result.checked, result.head_hash
    report.last_seq = result.last_seq if result.checked else report.first_seq - 1
    if trailer is None:
        report.problem = "the end marker is missing: the archive was truncated"
    elif (trailer.get("count"), trailer.get("last_seq"), trailer.get("last_hash")) != (
        report.count,
        report.last_seq,
        report.last_hash,
    ):
        report.problem = "the end marker does not match the events (events were removed or added)"


def _json(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise _Bad(f"line {number}: not JSON ({exc.msg})") from None


class _Bad(ValueError):
    pass


def verify_archives(log: SqlAuditLog, paths: Sequence[Path]) -> list[ArchiveReport]:
    """Checks each archive and how it links to the live chain (see the module docstring)."""
    reports: list[ArchiveReport] = []
    for path in paths:
        reports.append(read_archive(path))
    reports.sort(key=lambda r: r.first_seq or 0)
    anchor = log.anchor()
    vouched = _archive_events(log)
    for i, report in enumerate(reports):
        if report.problem is not None:
            continue
        later = reports[i + 1] if i + 1 < len(reports) else None
        key = (report.last_seq, report.last_hash)
        if (anchor.first_seq, anchor.prev_hash) == (
            (report.last_seq or 0) + 1,
            report.last_hash,
        ):
            report.linked_by = f"the live chain continues at event {anchor.first_seq}"
        elif key in vouched:
            report.linked_by = f"live event {vouched[key]} (audit.archived) names its last hash"
        elif (
            later is not None
            and later.problem is None
            and later.first_seq == (report.last_seq or 0) + 1
            and later.prev_hash == report.last_hash
        ):
            report.linked_by = f"{later.path.name} continues it"
        else:
            report.problem = (
                "intact, but nothing links it to the live chain: no live `audit.archived` "
                "event names its last hash (pass the newer archives too)"
            )
        if report.first_seq == 1 and report.prev_hash != GENESIS_HASH:
            report.problem = "the first archive does not start from the genesis hash"
    return reports


def _archive_events(log: SqlAuditLog) -> dict[tuple[int | None, str], int]:
    found: dict[tuple[int | None, str], int] = {}
    where = AuditFilter(event_types=(EventType.AUDIT_ARCHIVED.value,))
    for event in log.iter_events(where):
        try:
            found[(int(event.details["last_seq"]), str(event.details["last_hash"]))] = event.seq
        except (KeyError, TypeError, ValueError):
            continue
    return found
