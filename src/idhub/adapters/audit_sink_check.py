"""`idhub audit verify --jsonl FILE`: a JSON-lines sink file checked line by line against the
live chain, not only its last line.

The file passes when every line is a whole audit event whose hash is right for its content and
its predecessor (the chain inside the file holds on its own), the lines follow each other
without a gap or a repeat, every one still in the live chain has the live event's hash, and the
file begins no later than the live chain does (nothing the database holds is missing before
the file's first line). A file behind the head is reported, not failed: a sink may lag.
Constant memory: the file and the chain are both walked in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idhub.adapters.audit_store import SqlAuditLog
from idhub.core.audit import AuditEvent
from idhub.core.audit_chain import ChainVerifier, canonical_details, event_row


@dataclass
class SinkFileReport:
    path: Path
    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    behind: int = 0  # live events after the file's last line
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Bad(ValueError):
    pass


def _events(path: Path) -> Iterator[tuple[int, AuditEvent]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                raise _Bad(f"line {number} is incomplete (a torn write)")
            try:
                data: Any = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise _Bad(f"line {number}: not JSON ({exc})") from None
            if not isinstance(data, dict):
                raise _Bad(f"line {number}: not a JSON object")
            try:
                event = AuditEvent.from_dict(data)
            except (KeyError, TypeError, ValueError) as exc:
                raise _Bad(f"line {number}: not an audit event ({exc})") from None
            if event_row(event)[10] != canonical_details(data.get("details") or {}):
                raise _Bad(f"line {number}: details are not in canonical form")
            yield number, event


def verify_sink_file(log: SqlAuditLog, path: Path) -> SinkFileReport:
    report = SinkFileReport(path)
    try:
        _check(log, path, report)
    except _Bad as exc:
        report.problem = str(exc)
    except OSError as exc:
        report.problem = f"cannot read the file: {exc.strerror or exc}"
    return report


def _check(log: SqlAuditLog, path: Path, report: SinkFileReport) -> None:
    verifier: ChainVerifier | None = None
    live: Iterator[AuditEvent] | None = None
    pending: AuditEvent | None = None
    for number, event in _events(path):
        if verifier is None:
            verifier = ChainVerifier(first_seq=event.seq, prev_hash=event.prev_hash)
            report.first_seq = event.seq
            anchor = log.anchor()
            if event.seq > anchor.first_seq and _live_has(log, event.seq - 1):
                raise _Bad(f"line 1 is event {event.seq}: the live events before it are missing")
            live = log.iter_events(after_seq=event.seq - 1)
        if not verifier.feed([event_row(event)]):
            broken = verifier.report().problem
            assert broken is not None
            raise _Bad(f"line {number}: {broken.message}")
        assert live is not None
        pending = pending or next(live, None)
        if pending is not None and pending.seq < event.seq:
            raise _Bad(f"live event {pending.seq} is missing before line {number}")
        if pending is not None and pending.seq == event.seq:
            if pending.hash != event.hash:
                raise _Bad(f"line {number}: event {event.seq} differs from the live chain")
            pending = None
        report.count += 1
        report.last_seq = event.seq
    if verifier is None:
        report.problem = "the file holds no events"
        return
    head = log.head()
    if head is not None and report.last_seq is not None:
        report.behind = max(0, head.seq - report.last_seq)


def _live_has(log: SqlAuditLog, seq: int) -> bool:
    found = log.search(after_seq=seq - 1, limit=1, newest_first=False)
    return bool(found) and found[0].seq == seq
