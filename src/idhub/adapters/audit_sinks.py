"""Streaming copies of the audit trail for a SIEM: a JSON-lines file and syslog (RFC 5424).

A shipper tails the audit table in chain order - so it sees the events of every
process and replica writing to the database, not only its own - and hands new events to
each sink. Each sink remembers how far it got (the JSON-lines file by its own last line,
syslog by a cursor file), so a restart resumes where it stopped: delivery is at-least-once,
and every copy carries `seq` and `hash` so a receiver can drop duplicates and check the
chain. Local appends wake the shipper at once; others' are picked up by polling.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from idhub.adapters.audit_store import SqlAuditLog
from idhub.config import Settings
from idhub.core.audit import AuditEvent, iso_time
from idhub.errors import AuditError, ConfigError

log = logging.getLogger("idhub.audit.sinks")

_BATCH = 1_000
# RFC 5424 section 7.2.2: an SD-ID with '@' carries a private enterprise number; 32473 is
# the number reserved for documentation and examples (RFC 5612).
SD_ID = "idhub@32473"
_FACILITY_AUTHPRIV = 10
_SEVERITY = {"success": 6, "failure": 5, "denied": 5, "error": 3}
_MAX_DATAGRAM = 60_000


class Sink(Protocol):
    name: str
    # Held (flock) while a process reads the position and delivers, so the workers of one
    # `idhub serve --workers N` never send the same event twice or interleave lines.
    lock_file: Path

    def position(self) -> int | None:
        """The last seq delivered, or None when the sink has never delivered anything."""
        ...

    def deliver(self, events: Sequence[AuditEvent]) -> None: ...

    def repair(self) -> int:
        """Undoes a delivery torn by a crash (called under the lock before delivering)."""
        ...

    def close(self) -> None: ...


class JsonlFileSink:
    """Appends one JSON object per event (the export form, hashes included) and fsyncs
    each batch; the file's last line is its position, so nothing else needs storing.

    A batch lands whole or not at all: a write or fsync that fails (a full disk) cuts the
    file back to where the batch began, so the retry never continues a partial line. A tail
    torn anyway (the process killed mid-write, the machine losing power) is cut off by
    `repair` before the next delivery, and the events in it are delivered again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"jsonl:{path}"
        self.lock_file = path.with_name(path.name + ".lock")

    def position(self) -> int | None:
        # Read every time, not cached: another worker process may have appended.
        return _last_seq(self.path)

    def repair(self) -> int:
        """Cuts a torn last line (one without its newline); returns the bytes removed.
        Called with the sink's lock held, so no other process is mid-write."""
        try:
            handle = self.path.open("r+b")
        except FileNotFoundError:
            return 0
        with handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return 0  # the usual case: one byte read per round
            keep = size
            while keep > 0:
                step = min(keep, 1 << 16)
                handle.seek(keep - step)
                chunk = handle.read(step)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = keep - step + newline + 1
                    break
                keep -= step
            if keep == size:
                return 0
            handle.truncate(keep)
            os.fsync(handle.fileno())
        log.warning("audit sink %s: cut a torn last line (%d bytes)", self.name, size - keep)
        return size - keep

    def deliver(self, events: Sequence[AuditEvent]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in events).encode(
            "utf-8"
        )
        # Owner-only: the trail names users, addresses and clients.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                # Shrinking needs no free space; what was written of this batch goes.
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    def close(self) -> None:
        pass


def _last_seq(path: Path) -> int | None:
    if not path.exists():
        return None
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - (1 << 16)))
        lines = handle.read().splitlines()
    for raw in reversed(lines):
        try:
            return int(json.loads(raw)["seq"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line from a crash: the line before it counts
    return None


class SyslogSink:
    """RFC 5424 messages over UDP (RFC 5426), TCP with octet counting (RFC 6587) or a local
    unix datagram socket such as /dev/log. The position lives in a small cursor file."""

    def __init__(self, url: str, cursor_file: Path, *, hostname: str | None = None) -> None:
        self.url = url
        self.name = f"syslog:{url}"
        self._cursor_file = cursor_file
        self.lock_file = cursor_file.with_name(cursor_file.name + ".lock")
        self._hostname = (hostname or socket.gethostname() or "-")[:255]
        parts = urlsplit(url)
        self._scheme = parts.scheme
        if parts.scheme in ("udp", "tcp"):
            if not parts.hostname or not parts.port:
                raise ValueError("needs a host and port, e.g. udp://127.0.0.1:514")
            self._address: str | tuple[str, int] = (parts.hostname, parts.port)
        elif parts.scheme == "unix":
            if not parts.path:
                raise ValueError("needs a socket path, e.g. unix:///dev/log")
            self._address = parts.path
        else:
            raise ValueError("must start with udp://, tcp:// or unix://")
        self._sock: socket.socket | None = None

    def position(self) -> int | None:
        try:
            return int(self._cursor_file.read_text(encoding="ascii").split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _save(self, seq: int) -> None:
        self._cursor_file.parent.mkdir(parents=True, exist_ok=True)
        temp = self._cursor_file.with_name(self._cursor_file.name + ".tmp")
        temp.write_text(f"{seq}\n", encoding="ascii")
        os.replace(temp, self._cursor_file)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            if self._scheme == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            elif self._scheme == "udp":
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.settimeout(5)
            try:
                sock.connect(self._address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def deliver(self, events: Sequence[AuditEvent]) -> None:
        try:
            sock = self._connect()
            for event in events:
                message = format_rfc5424(event, hostname=self._hostname)
                if self._scheme == "tcp":
                    sock.sendall(str(len(message)).encode() + b" " + message)
                else:
                    sock.send(message)
        except OSError:
            self.close()
            raise
        self._save(events[-1].seq)

    def repair(self) -> int:
        return 0  # a datagram or an octet-counted frame is whole or not sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def format_rfc5424(event: AuditEvent, *, hostname: str) -> bytes:
    """`<PRI>1 TIMESTAMP HOST idhub PROCID MSGID [idhub@32473 ...] BOM{json}`."""
    pri = _FACILITY_AUTHPRIV * 8 + _SEVERITY.get(event.outcome, 5)
    actor = event.actor_type if event.actor_id is None else f"{event.actor_type}:{event.actor_id}"
    params = {
        "seq": str(event.seq),
        "hash": event.hash,
        "prev": event.prev_hash,
        "actor": actor,
        "target": event.target or "",
        "outcome": event.outcome,
        "ip": event.client_ip or "",
        "request_id": event.request_id or "",
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items() if v) + "]"
    host = "".join(ch for ch in hostname if 33 <= ord(ch) <= 126) or "-"
    header = (
        f"<{pri}>1 {iso_time(event.ts)} {host} idhub {os.getpid()} {event.event_type[:32]} {sd} "
    )
    body = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
    message = header.encode() + b"\xef\xbb\xbf" + body.encode()
    if len(message) > _MAX_DATAGRAM:
        # Only the details can be that large; the structured data keeps seq and hash.
        short = dict(event.to_dict(), details={"_truncated": True})
        message = header.encode() + b"\xef\xbb\xbf" + json.dumps(short, ensure_ascii=False).encode()
    return message


def _sd_escape(value: str) -> str:
    # RFC 5424 section 6.3.3: '"', '\' and ']' are escaped inside PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class AuditShipper:
    """Feeds the sinks; `ship_once` is the whole job. A server runs it as a background job,
    woken by a local append (`SqlAuditLog.listeners`) or after a second for others' appends."""

    def __init__(self, audit: SqlAuditLog, sinks: Sequence[Sink]) -> None:
        self._audit = audit
        self.sinks = list(sinks)
        self.errors: dict[str, str] = {}

    def prepare(self) -> None:
        """Fixes each new sink's start position now, not at the first round: what is
        recorded after a server started is always shipped."""
        for sink in self.sinks:
            try:
                if sink.position() is None:
                    self._start_position(sink)
            except (OSError, AuditError) as exc:
                self.errors[sink.name] = str(exc)

    def close(self) -> None:
        self.ship_once()  # what arrived during shutdown still goes out
        for sink in self.sinks:
            sink.close()

    def ship_once(self) -> int:
        """Delivers everything new to every sink; returns the number of events delivered."""
        delivered = 0
        for sink in self.sinks:
            try:
                delivered += self._ship(sink)
                self.errors.pop(sink.name, None)
            except (OSError, AuditError) as exc:
                if self.errors.get(sink.name) != str(exc):
                    log.warning("audit sink %s failed (will retry): %s", sink.name, exc)
                self.errors[sink.name] = str(exc)
        return delivered

    def _ship(self, sink: Sink) -> int:
        sink.lock_file.parent.mkdir(parents=True, exist_ok=True)
        with open(sink.lock_file, "a+b") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another process of this host is shipping right now
            try:
                sink.repair()
                after = sink.position()
                if after is None:
                    after = self._start_position(sink)
                delivered = 0
                while True:
                    events = self._audit.search(after_seq=after, limit=_BATCH, newest_first=False)
                    if not events:
                        return delivered
                    sink.deliver(events)
                    delivered += len(events)
                    after = events[-1].seq
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _start_position(self, sink: Sink) -> int:
        # A new file gets the whole live chain (a full copy the verifier can compare with);
        # a new syslog destination starts at the current head instead of replaying history
        # into a SIEM (`idhub audit export` is there for that).
        if isinstance(sink, SyslogSink):
            head = self._audit.head()
            start = head.seq if head else 0
            sink._save(start)
            return start
        return 0

    def lag(self) -> dict[str, int]:
        """Events each sink is behind the chain's head ({} when the head cannot be read)."""
        try:
            head = self._audit.head()
        except AuditError:
            return {}
        top = head.seq if head is not None else 0
        behind = {}
        for sink in self.sinks:
            try:
                position = sink.position()
            except OSError:
                position = None
            behind[sink.name] = max(0, top - (position or 0))
        return behind

    def readiness(self) -> str:
        if self.errors:
            return "; ".join(f"{name}: {error}" for name, error in sorted(self.errors.items()))
        return "ok"


def build_shipper(audit: SqlAuditLog, settings: Settings) -> AuditShipper | None:
    """The configured sinks (`[audit] jsonl_path`, `[audit] syslog`), or None if none."""
    sinks: list[Sink] = []
    if settings.audit.jsonl_path is not None:
        sinks.append(JsonlFileSink(settings.audit.jsonl_path))
    if settings.audit.syslog:
        try:
            sinks.append(
                SyslogSink(settings.audit.syslog, settings.var_dir / "audit-syslog.cursor")
            )
        except ValueError as exc:
            raise ConfigError(
                f"[audit] syslog = {settings.audit.syslog!r} {exc}",
                file=str(settings.config_file) if settings.config_file else None,
            ) from None
    return AuditShipper(audit, sinks) if sinks else None
