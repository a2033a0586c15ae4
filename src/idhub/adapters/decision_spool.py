"""Decision records held during a database outage, kept on local disk until they are appended
(the `HeldSpool` of core/authz/deferred_audit.py).

One file per process, `decisions-<pid>-<random>.jsonl` in the spool directory, locked
(`flock`, exclusive) by its process for as long as it lives. The kernel lets the lock go when
the process dies, however it dies: that is how another process tells a file left behind from
a live one, without pid files that a reused pid would fool. A file is created under a
temporary name, locked, and only then renamed into place, so no other process can claim it
in the moment between its creation and its lock.

Each line is a held record (`{"r": ...}`) or a settled mark (`{"s": N}`: the first N records
of the file are appended or dropped). A write is one `write(2)` on an `O_APPEND` descriptor
followed by `fsync`, made before the decision is answered, so a crash leaves at most its last
line cut short; reading stops there with a warning naming the file and line. When every record
of a file is settled the file is emptied, so an outage leaves no file that grows.

The records hold what a decision's audit event holds (the question, the answer, the asking
client and request context), never a token or a secret; the files are readable by their owner
only.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext

log = logging.getLogger("idhub.authz")

_PATTERN = "decisions-*.jsonl"


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _record(event: PendingEvent) -> dict[str, Any]:
    ctx = event.ctx
    return {
        "r": {
            "type": event.event_type.value,
            "actor": [event.actor.type, event.actor.id],
            "target": event.target,
            "outcome": event.outcome,
            "details": event.details,
            "ctx": None if ctx is None else [ctx.client_ip, ctx.user_agent, ctx.request_id],
        }
    }


def _event(raw: dict[str, Any]) -> PendingEvent:
    ctx = raw["ctx"]
    return PendingEvent(
        EventType(raw["type"]),
        Actor(raw["actor"][0], raw["actor"][1]),
        raw["target"],
        raw["outcome"],
        dict(raw["details"]),
        None if ctx is None else RequestContext(ctx[0], ctx[1], ctx[2]),
    )


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_spool(path: Path, data: bytes) -> tuple[list[PendingEvent], int]:
    """The records of a spool file and how many of the first are settled."""
    records: list[PendingEvent] = []
    settled = 0
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            if "s" in value:
                settled = max(settled, int(value["s"]))
            else:
                records.append(_event(value["r"]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            cut = number == len(lines)  # the last line, with no newline after it
            log.warning(
                "decision spool %s line %d: %s, %s",
                path,
                number,
                "cut short by a crash" if cut else "unreadable",
                exc,
            )
    return records, min(settled, len(records))


class _LeftBehind:
    """A dead process's spool file, locked by this process until `done`."""

    def __init__(self, path: Path, fd: int, records: list[PendingEvent], settled: int) -> None:
        self._path = path
        self._fd = fd
        self._records = records
        self._settled = settled

    def unsettled(self) -> Sequence[PendingEvent]:
        return self._records[self._settled :]

    def settle(self, count: int) -> None:
        self._settled += count
        _write(self._fd, _line({"s": self._settled}))

    def done(self) -> None:
        self._path.unlink(missing_ok=True)
        os.close(self._fd)


class FileDecisionSpool:
    """`HeldSpool` over files in `directory` (created when first needed, owner-only)."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._fd: int | None = None
        self._path: Path | None = None
        self._pid = 0
        self._kept = 0
        self._settled = 0

    def keep(self, events: Sequence[PendingEvent]) -> None:
        fd = self._own()
        _write(fd, b"".join(_line(_record(e)) for e in events))
        self._kept += len(events)

    def settle(self, count: int) -> None:
        if self._fd is None or self._pid != os.getpid():
            return  # nothing kept by this process
        self._settled += count
        if self._settled >= self._kept:
            self.reset()
        else:
            _write(self._fd, _line({"s": self._settled}))

    def reset(self) -> None:
        if self._fd is None or self._pid != os.getpid():
            return
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._kept = self._settled = 0

    def left_behind(self) -> Iterator[_LeftBehind]:
        if not self._dir.is_dir():
            return
        for path in sorted(self._dir.glob(_PATTERN)):
            if path == self._path:
                continue
            claimed = self._claim(path)
            if claimed is not None:
                yield claimed
        for staging in self._dir.glob("decisions-*.staging"):
            # A process that died between creating its file and naming it wrote nothing.
            claimed = self._claim(staging)
            if claimed is not None:
                claimed.done()

    def _claim(self, path: Path) -> _LeftBehind | None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            return None  # settled and removed by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its process is alive (or another one claimed it first)
            return None
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # removed by the process that held it just before we locked
            return None
        with open(fd, "rb", closefd=False) as file:
            data = file.read()
        records, settled = read_spool(path, data)
        return _LeftBehind(path, fd, records, settled)

    def _own(self) -> int:
        pid = os.getpid()
        if self._fd is not None and self._pid == pid:
            return self._fd
        # A forked child must not write into its parent's file (nor hold its lock for it).
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"decisions-{pid}-{secrets.token_hex(4)}"
        staging = self._dir / f"{name}.staging"
        fd = os.open(staging, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self._dir / f"{name}.jsonl"
            os.rename(staging, path)
            _fsync_dir(self._dir)
        except OSError:
            os.close(fd)
            staging.unlink(missing_ok=True)
            raise
        self._fd, self._path, self._pid = fd, path, pid
        self._kept = self._settled = 0
        return fd
