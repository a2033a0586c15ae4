"""`idhub audit tail | search | export | verify | archive`."""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from idhub.bootstrap import Services
from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.core.audit import (
    ACTOR_TYPES,
    OUTCOMES,
    Actor,
    AuditEvent,
    AuditFilter,
    check_event_types,
    iso_time,
    parse_when,
)
from idhub.errors import InvalidInput

EXIT_FAILED_CHECK = 1


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="read, export, verify and archive the audit trail")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")

    p = actions.add_parser("tail", help="show the newest events")
    p.add_argument("-n", "--lines", type=int, default=20, help="how many (default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--interval", type=float, default=1.0, help="poll interval for --follow")
    p.add_argument("--exit-after", type=float, help="stop following after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_tail)

    p = actions.add_parser("search", help="find events (newest first)")
    _filters(p)
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--json", action="store_true", help="a JSON array")
    p.set_defaults(func=cmd_search)

    p = actions.add_parser("export", help="write events as JSON lines, oldest first")
    _filters(p)
    p.add_argument("--format", choices=["jsonl"], default="jsonl")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.set_defaults(func=cmd_export)

    p = actions.add_parser("verify", help="check the hash chain (exit 1 if broken)")
    p.add_argument(
        "--archive", action="append", default=[], metavar="FILE", help="also check an archive"
    )
    p.add_argument(
        "--jsonl",
        action="append",
        default=[],
        metavar="FILE",
        help="also check a JSON-lines sink file line by line against the chain",
    )
    p.add_argument(
        "--head",
        metavar="SEQ:HASH",
        help="a head recorded earlier (from a previous verify or an external copy); "
        "detects events removed from the end",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = actions.add_parser("archive", help="move old events into a compressed archive file")
    p.add_argument("--before", required=True, help="events older than this (date, time or age)")
    p.add_argument("-o", "--output", help="archive file (default: VAR/audit-archive/...)")
    p.set_defaults(func=cmd_archive)

    def no_action(args: argparse.Namespace, ctx: CliContext) -> int:
        audit.print_help()
        return 2

    audit.set_defaults(func=no_action)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type", action="append", default=[], help="event type, or a prefix like token.*"
    )
    p.add_argument(
        "--actor", help=f"actor id, or TYPE:ID with TYPE one of {', '.join(ACTOR_TYPES)}"
    )
    p.add_argument("--target", help="exact target")
    p.add_argument("--outcome", choices=OUTCOMES)
    p.add_argument("--since", help="from this time (2026-01-31, ISO date-time, or age like 7d)")
    p.add_argument("--until", help="before this time")


def audit_filter(
    args: argparse.Namespace, now: float, *, names: _Names | None = None
) -> AuditFilter:
    def when(value: str | None, flag: str) -> float | None:
        if value is None:
            return None
        try:
            return parse_when(value, now=now)
        except ValueError as exc:
            raise InvalidInput(f"{flag}: {exc}") from None

    actor = args.actor
    if names is not None and actor and actor.startswith("user:"):
        # The listing shows `user:<username>`; filtering by what it shows must work too.
        actor = f"user:{names.sub_of(actor[5:]) or actor[5:]}"
    return AuditFilter(
        event_types=check_event_types(args.type),
        actor=actor,
        target=args.target,
        outcome=args.outcome,
        since=when(args.since, "--since"),
        until=when(args.until, "--until"),
    )


class _Names:
    """Usernames for the subjects in a listing: the chain records a person by their `sub` (it
    never changes, and a username in the chain would outlive a rename); an admin reading the
    table wants the name. Looked up once per subject; the stored events are not touched."""

    def __init__(self, ctx: CliContext) -> None:
        self._identity = ctx.services.identity
        self._known: dict[str, str | None] = {}

    def of(self, sub: str) -> str | None:
        if sub not in self._known:
            user = self._identity.get_user_by_sub(sub) if _SUB.fullmatch(sub) else None
            self._known[sub] = user.username if user is not None else None
        return self._known[sub]

    def sub_of(self, username: str) -> str | None:
        user = self._identity.get_user_by_username(username)
        return user.sub if user is not None else None

    def actor(self, event: AuditEvent) -> str:
        if event.actor_id is None:
            return event.actor_type
        name = self.of(event.actor_id) if event.actor_type == "user" else None
        return f"{event.actor_type}:{name or event.actor_id}"

    def target(self, event: AuditEvent) -> str | None:
        if event.target is None:
            return None
        return self.of(event.target) or event.target


# What idhub assigns as `sub` (core/identity.new_subject); anything else is not looked up.
_SUB = re.compile(r"[0-9a-f]{32}")


def _rows(events: Iterable[AuditEvent], names: _Names) -> list[list[Any]]:
    rows = []
    for e in events:
        details = json.dumps(e.details, ensure_ascii=False, sort_keys=True)
        if len(details) > 60:
            details = details[:59] + "…"
        rows.append([e.seq, iso_time(e.ts), e.event_type, names.actor(e), names.target(e),
                     e.outcome, e.client_ip, details])  # fmt: skip
    return rows


_HEADERS = ("SEQ", "TIME (UTC)", "TYPE", "ACTOR", "TARGET", "OUTCOME", "IP", "DETAILS")


def _print_events(events: list[AuditEvent], as_json: bool, names: _Names) -> None:
    if as_json:
        for event in events:
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
    elif events:
        print_table(_HEADERS, _rows(events, names))


def cmd_tail(args: argparse.Namespace, ctx: CliContext) -> int:
    log = ctx.services.audit_log
    names = _Names(ctx)
    events = list(reversed(log.search(limit=max(args.lines, 0)))) if args.lines > 0 else []
    _print_events(events, args.json, names)
    if not args.follow:
        if not events and not args.json:
            print("no audit events")
        return 0
    if events:
        last = events[-1].seq
    else:
        head = log.head()
        last = head.seq if head else 0
    deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
    while deadline is None or time.monotonic() < deadline:
        new = log.search(after_seq=last, limit=1000, newest_first=False)
        if new:
            if args.json:
                _print_events(new, True, names)
            else:
                for row in _rows(new, names):
                    print("  ".join("" if v is None else str(v) for v in row), flush=True)
            last = new[-1].seq
            continue
        sys.stdout.flush()
        time.sleep(args.interval)
    return 0


def cmd_search(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    where = audit_filter(args, services.clock.now(), names=_Names(ctx))
    events = services.audit_log.search(where, limit=max(args.limit, 1))
    if args.json:
        print_json([e.to_dict() for e in events])
    elif events:
        print_table(_HEADERS, _rows(events, _Names(ctx)))
    else:
        print("no matching audit events")
    return 0


def cmd_export(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    where = audit_filter(args, services.clock.now(), names=_Names(ctx))
    target = Path(args.output) if args.output else None
    count = 0
    out = target.open("w", encoding="utf-8") if target else sys.stdout
    try:
        for event in services.audit_log.iter_events(where):
            out.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    finally:
        if target:
            out.close()
    if target:
        print(f"exported {count} events to {target}", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace, ctx: CliContext) -> int:
    result = _verify(args, ctx)
    if args.json:
        print_json(result)
    else:
        _print_verify(result)
    return 0 if result["ok"] else EXIT_FAILED_CHECK


def _verify(args: argparse.Namespace, ctx: CliContext) -> dict[str, Any]:
    """Every check `audit verify` makes, as plain data (what `--json` prints)."""
    services = ctx.services
    log = services.audit_log
    started = time.monotonic()
    report = log.verify()
    live: dict[str, Any] = {
        "ok": report.ok,
        "checked": report.checked,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "seconds": round(time.monotonic() - started, 3),
        "head": f"{report.last_seq or 0}:{report.head_hash}" if report.ok else None,
        "problem": None,
    }
    if report.problem is not None:
        live["problem"] = {"seq": report.problem.seq, "message": report.problem.message}
    heads: list[tuple[str, str]] = []
    if args.head:
        heads.append(("--head", args.head))
    sink = services.settings.audit.jsonl_path
    if sink is not None and sink.exists():
        last = _last_line(sink)
        if last:
            heads.append((f"the JSON-lines sink {sink}", f"{last['seq']}:{last['hash']}"))
    head_checks = []
    for source, head in heads:
        problem = log.check_head(head)
        head_checks.append({"source": source, "head": head, "ok": not problem, "problem": problem})
    archives = [
        {
            "path": str(archive.path),
            "ok": archive.ok,
            "count": archive.count,
            "first_seq": archive.first_seq,
            "last_seq": archive.last_seq,
            "linked_by": archive.linked_by,
            "problem": archive.problem,
        }
        for archive in services.audit_archives.verify([Path(p) for p in args.archive])
    ]
    sink_files = [_sink_file(services, Path(p)) for p in args.jsonl]
    ok = live["ok"] and all(h["ok"] for h in head_checks) and all(a["ok"] for a in archives)
    ok = ok and all(f["ok"] for f in sink_files)
    return {
        "ok": ok,
        "live": live,
        "heads": head_checks,
        "sink_files": sink_files,
        "archives": archives,
    }


def _print_verify(result: dict[str, Any]) -> None:
    live = result["live"]
    if live["ok"]:
        span = f"events {live['first_seq']}..{live['last_seq']}" if live["checked"] else "no events"
        print(f"live chain OK: {live['checked']} events ({span}) in {live['seconds']:.1f}s")
        print(f"head: {live['head']}")
    else:
        problem = live["problem"]
        print(f"live chain BROKEN at event {problem['seq']}: {problem['message']}")
        print(f"({live['checked']} events before it verified)")
    for check in result["heads"]:
        if check["ok"]:
            print(f"head check against {check['source']} OK")
        else:
            print(f"head check against {check['source']} FAILED: {check['problem']}")
    for sink_file in result["sink_files"]:
        _print_sink_file(sink_file)
    for archive in result["archives"]:
        if archive["ok"]:
            print(
                f"archive {archive['path']} OK: {archive['count']} events "
                f"({archive['first_seq']}..{archive['last_seq']}); linked: {archive['linked_by']}"
            )
        else:
            print(f"archive {archive['path']} BROKEN: {archive['problem']}")


def _sink_file(services: Services, path: Path) -> dict[str, Any]:
    """The check of one JSON-lines sink file against the chain, as plain data."""
    report = services.audit_sink_file_check(path)
    return {
        "path": str(path),
        "ok": report.ok,
        "count": report.count,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "behind": report.behind,
        "problem": report.problem,
    }


def _print_sink_file(check: dict[str, Any]) -> None:
    if not check["ok"]:
        print(f"JSON-lines file {check['path']} FAILED: {check['problem']}")
        return
    behind = f"; {check['behind']} newer events not in it yet" if check["behind"] else ""
    print(
        f"JSON-lines file {check['path']} OK: {check['count']} events "
        f"({check['first_seq']}..{check['last_seq']}) match the chain{behind}"
    )


def _last_line(path: Path) -> dict[str, Any] | None:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - 65536))
        lines = handle.read().splitlines()
    for raw in reversed(lines):
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and "seq" in data and "hash" in data:
            return data
    return None


def cmd_archive(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    try:
        before = parse_when(args.before, now=services.clock.now())
    except ValueError as exc:
        raise InvalidInput(f"--before: {exc}") from None
    if before > services.clock.now():
        raise InvalidInput("--before is in the future; archiving keeps every recent event")
    result = services.audit_archives.archive_before(
        before,
        actor=Actor("admin", f"cli:{getpass.getuser()}"),
        output=Path(args.output) if args.output else None,
    )
    if result is None:
        print(f"no events before {iso_time(before)}; nothing archived")
        return 0
    print(
        f"archived {result.count} events ({result.first_seq}..{result.last_seq}) "
        f"to {result.path}\nlast hash: {result.last_hash}"
    )
    return 0
