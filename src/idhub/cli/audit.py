"""`idhub audit tail | search | export | verify | archive`."""

from __future__ import annotations

import argparse
import getpass
import json
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


def audit_filter(args: argparse.Namespace, now: float) -> AuditFilter:
    def when(value: str | None, flag: str) -> float | None:
        if value is None:
            return None
        try:
            return parse_when(value, now=now)
        except ValueError as exc:
            raise InvalidInput(f"{flag}: {exc}") from None

    return AuditFilter(
        event_types=check_event_types(args.type),
        actor=args.actor,
        target=args.target,
        outcome=args.outcome,
        since=when(args.since, "--since"),
        until=when(args.until, "--until"),
    )


def _rows(events: Iterable[AuditEvent]) -> list[list[Any]]:
    rows = []
    for e in events:
        actor = e.actor_type if e.actor_id is None else f"{e.actor_type}:{e.actor_id}"
        details = json.dumps(e.details, ensure_ascii=False, sort_keys=True)
        if len(details) > 60:
            details = details[:59] + "…"
        rows.append([e.seq, iso_time(e.ts), e.event_type, actor, e.target, e.outcome,
                     e.client_ip, details])  # fmt: skip
    return rows


_HEADERS = ("SEQ", "TIME (UTC)", "TYPE", "ACTOR", "TARGET", "OUTCOME", "IP", "DETAILS")


def _print_events(events: list[AuditEvent], as_json: bool) -> None:
    if as_json:
        for event in events:
            print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
    elif events:
        print_table(_HEADERS, _rows(events))


def cmd_tail(args: argparse.Namespace, ctx: CliContext) -> int:
    log = ctx.services.audit_log
    events = list(reversed(log.search(limit=max(args.lines, 0)))) if args.lines > 0 else []
    _print_events(events, args.json)
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
                _print_events(new, True)
            else:
                for row in _rows(new):
                    print("  ".join("" if v is None else str(v) for v in row), flush=True)
            last = new[-1].seq
            continue
        sys.stdout.flush()
        time.sleep(args.interval)
    return 0


def cmd_search(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    where = audit_filter(args, services.clock.now())
    events = services.audit_log.search(where, limit=max(args.limit, 1))
    if args.json:
        print_json([e.to_dict() for e in events])
    elif events:
        print_table(_HEADERS, _rows(events))
    else:
        print("no matching audit events")
    return 0


def cmd_export(args: argparse.Namespace, ctx: CliContext) -> int:
    services = ctx.services
    where = audit_filter(args, services.clock.now())
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
    services = ctx.services
    log = services.audit_log
    started = time.monotonic()
    report = log.verify()
    took = time.monotonic() - started
    failed = False
    if report.ok:
        span = f"events {report.first_seq}..{report.last_seq}" if report.checked else "no events"
        print(f"live chain OK: {report.checked} events ({span}) in {took:.1f}s")
        print(f"head: {report.last_seq or 0}:{report.head_hash}")
    else:
        assert report.problem is not None
        failed = True
        print(f"live chain BROKEN at event {report.problem.seq}: {report.problem.message}")
        print(f"({report.checked} events before it verified)")
    heads: list[tuple[str, str]] = []
    if args.head:
        heads.append(("--head", args.head))
    sink = services.settings.audit.jsonl_path
    if sink is not None and sink.exists():
        last = _last_line(sink)
        if last:
            heads.append((f"the JSON-lines sink {sink}", f"{last['seq']}:{last['hash']}"))
    for source, head in heads:
        problem = log.check_head(head)
        if problem:
            failed = True
            print(f"head check against {source} FAILED: {problem}")
        else:
            print(f"head check against {source} OK")
    for sink_file in args.jsonl:
        failed = _verify_sink_file(services, Path(sink_file)) or failed
    for archive in services.audit_archives.verify([Path(p) for p in args.archive]):
        if archive.ok:
            print(
                f"archive {archive.path} OK: {archive.count} events "
                f"({archive.first_seq}..{archive.last_seq}); linked: {archive.linked_by}"
            )
        else:
            failed = True
            print(f"archive {archive.path} BROKEN: {archive.problem}")
    return EXIT_FAILED_CHECK if failed else 0


def _verify_sink_file(services: Services, path: Path) -> bool:
    """Prints the check of one sink file; True when it failed."""
    report = services.audit_sink_file_check(path)
    if not report.ok:
        print(f"JSON-lines file {path} FAILED: {report.problem}")
        return True
    behind = f"; {report.behind} newer events not in it yet" if report.behind else ""
    print(
        f"JSON-lines file {path} OK: {report.count} events "
        f"({report.first_seq}..{report.last_seq}) match the chain{behind}"
    )
    return False


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
