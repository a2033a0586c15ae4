"""`idhub directory test <name>`, `idhub sync ldap <name>` and `idhub sync status`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from idhub.cli._context import CliContext
from idhub.cli._output import print_json, print_table
from idhub.cli.links import register_sync_commands
from idhub.core.directory.plan import SyncPlan, UserChange
from idhub.core.directory.sync import DirectorySync

EXIT_FAILED_CHECK = 1
SYMBOLS = {
    "create": "+",
    "update": "~",
    "move": ">",
    "disable": "-",
    "enable": "^",
    "link": "=",
    "unlink": "/",
}


def register(sub: Any) -> None:
    directory = sub.add_parser("directory", help="inspect configured directory sources")
    directory_sub = directory.add_subparsers(dest="directory_command", metavar="ACTION")
    p = directory_sub.add_parser("test", help="connect to an LDAP source and show mapped samples")
    p.add_argument("name", help="the <name> of [directory.ldap.<name>]")
    p.add_argument("--sample", type=int, default=5, help="how many users to show (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_directory_test)

    sync = sub.add_parser("sync", help="mirror directory sources into idhub")
    sync_sub = sync.add_subparsers(dest="sync_command", metavar="ACTION")
    p = sync_sub.add_parser("ldap", help="sync one LDAP / Active Directory source")
    p.add_argument("name", help="the <name> of [directory.ldap.<name>]")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.add_argument("--full", action="store_true", help="read every entry (finds deletions)")
    p.add_argument("--force", action="store_true", help="apply even if the safety brake trips")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--limit",
        type=int,
        default=200,
        help="per-user lines to print in text output (default 200; JSON has all)",
    )
    p.set_defaults(func=cmd_sync_ldap)

    # DingTalk and WeCom: read whole every run, so no --full; the rest as for LDAP.
    for kind, title in (("dingtalk", "DingTalk"), ("wecom", "WeCom")):
        p = sync_sub.add_parser(kind, help=f"sync one {title} organisation's contacts")
        p.add_argument("name", help=f"the <name> of [directory.{kind}.<name>]")
        p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
        p.add_argument("--force", action="store_true", help="apply even if the safety brake trips")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument(
            "--limit", type=int, default=200, help="per-user lines to print (default 200)"
        )
        p.set_defaults(func=cmd_sync_oa, kind=kind, full=True)

    p = sync_sub.add_parser("status", help="last runs and state of every source")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sync_status)
    register_sync_commands(sync_sub)


# ------------------------------------------------------------------ directory test


def cmd_directory_test(args: argparse.Namespace, ctx: CliContext) -> int:
    directory = ctx.services.ldap_directory(args.name)
    try:
        started = time.monotonic()
        info = directory.probe()
        samples = []
        problems: list[str] = []
        for page in directory.user_pages():
            samples.extend(page.users)
            problems.extend(page.problems)
            if len(samples) >= args.sample:
                break
        info["round_trip_ms"] = round((time.monotonic() - started) * 1000, 1)
    finally:
        directory.close()
    samples = samples[: max(0, args.sample)]
    rows = [
        {
            "username": u.username,
            "display_name": u.display_name,
            "email": u.email,
            "department": u.department,
            "disabled": u.disabled,
            "external_id": u.external_id,
            "dn": u.dn,
        }
        for u in samples
    ]
    if args.json:
        print_json({**info, "samples": rows, "problems": problems[:20]})
        return 0
    print(
        f"connected to {info['url']} (tls: {info['tls']}) as {info['bound_as']}"
        f" in {info['round_trip_ms']} ms"
    )
    print_table(
        ["username", "name", "email", "department", "disabled", "external id"],
        [
            [
                r["username"],
                r["display_name"],
                r["email"],
                r["department"],
                "yes" if r["disabled"] else "",
                r["external_id"],
            ]
            for r in rows
        ],
    )
    for problem in problems[:20]:
        print(f"warning: {problem}")
    return 0


# ------------------------------------------------------------------ sync ldap


class _ProgressBar:
    """A one-line bar on stderr, only on a terminal and only once a run takes a while."""

    def __init__(self, stream: TextIO, *, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled and stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._started < 1.0 or now - self._last < 0.2:
            return
        self._last = now
        if total:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "." * (width - filled)
            line = f"\r{phase:6} [{bar}] {done}/{total}"
        else:
            line = f"\r{phase:6} {done} entries"
        self._stream.write(line)
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\r" + " " * 60 + "\r")
            self._stream.flush()


def cmd_sync_ldap(args: argparse.Namespace, ctx: CliContext) -> int:
    return _run_sync(args, ctx.services.directory_sync(args.name))


def cmd_sync_oa(args: argparse.Namespace, ctx: CliContext) -> int:
    return _run_sync(args, ctx.services.oa_sync(f"{args.kind}:{args.name}"))


def _run_sync(args: argparse.Namespace, runner: DirectorySync) -> int:
    bar = _ProgressBar(sys.stderr, enabled=not args.json)
    try:
        report = runner.run(full=args.full, dry_run=args.dry_run, force=args.force, progress=bar)
    finally:
        bar.close()
    if args.json:
        print_json(report.as_dict())
    else:
        _print_report(
            report.plan,
            report.counts,
            dry_run=args.dry_run,
            limit=args.limit,
            run_id=report.run_id,
            status=report.status,
        )
    if args.dry_run and report.plan.brake is not None and not args.force:
        return EXIT_FAILED_CHECK
    return 0


def describe_change(change: UserChange) -> str:
    if change.kind == "create":
        after = {k: a for k, (_, a) in change.diff().items()}
        extra = " (disabled)" if after.get("disabled") else ""
        return f"{after.get('display_name', '')} {after.get('department') or ''}{extra}".strip()
    if change.kind == "disable" and change.entry is None:
        return "gone from the directory"
    if change.kind == "unlink":
        gone = "gone from" if change.entry is None else "disabled in"
        return f"{gone} a source that is not authoritative: link dropped, user kept"
    parts = []
    for name, (before, after) in change.fields.items():
        if name == "disabled":
            continue
        parts.append(
            f"{name}: {before if before is not None else '-'} -> "
            f"{after if after is not None else '-'}"
        )
    if change.kind == "disable":
        parts.insert(0, "disabled in the directory")
    if change.kind == "link":
        parts.insert(0, f"linked by {change.link_key}")
    return "; ".join(parts)


def _print_report(
    plan: SyncPlan, counts: dict[str, Any], *, dry_run: bool, limit: int, run_id: str, status: str
) -> None:
    title = "plan (dry run, nothing changed)" if dry_run else f"run {run_id}: {status}"
    print(f"{plan.source} {plan.mode} sync - {title}")
    keys: tuple[str, ...] = (
        "seen",
        "create",
        "update",
        "move",
        "disable",
        "enable",
        "departments_created",
    )
    keys += tuple(k for k in ("link", "unlink", "conflicts") if counts.get(k))
    extra = [
        k
        for k in (
            "managers_changed",
            "groups_created",
            "groups_deleted",
            "memberships_added",
            "memberships_removed",
            "sessions_ended",
        )
        if k in counts
    ]
    print_table(["what", "count"], [[k, counts.get(k, 0)] for k in (*keys, *extra)])
    if dry_run or limit:
        shown = plan.changes[: max(0, limit)]
        for change in shown:
            print(
                f"{SYMBOLS[change.kind]} {change.kind:8} {change.username:20} "
                f"{describe_change(change)}"
            )
        if len(plan.changes) > len(shown):
            print(f"... and {len(plan.changes) - len(shown)} more (use --json for all)")
    for path in sorted(plan.new_departments)[: max(0, limit)]:
        print(f"+ department {path}")
    for warning in plan.warnings[:50]:
        print(f"warning: {warning}")
    if plan.brake is not None:
        verb = "a real run would stop" if dry_run else "forced past the brake"
        print(f"safety brake: {verb}: {plan.brake}")


# ------------------------------------------------------------------ sync status


def cmd_sync_status(args: argparse.Namespace, ctx: CliContext) -> int:
    store = ctx.services.directory_store
    configured = [s.source for s in ctx.settings.ldap_sources.values()]
    configured += list(ctx.settings.oa_sources)
    states = {s["source"]: s for s in store.all_states()}
    sources = sorted(set(configured) | set(states))
    out: list[dict[str, Any]] = []
    for source in sources:
        runs = store.recent_runs(source, limit=1)
        last: dict[str, Any] | None = runs[0] if runs else None
        state = states.get(source, {})
        out.append(
            {
                "source": source,
                "configured": source in configured,
                "last_run": last,
                "high_water": state.get("high_water"),
                "last_full_at": state.get("last_full_at"),
                "last_incremental_at": state.get("last_incremental_at"),
                "running_on": state.get("lock_owner"),
            }
        )
    if args.json:
        print_json(out)
        return 0
    if not out:
        print("no directory sources configured and no runs recorded")
        return 0
    rows = []
    for item in out:
        run: dict[str, Any] = item["last_run"] or {}
        counts = run.get("counts") or {}
        summary = " ".join(
            f"{k}={counts[k]}"
            for k in ("create", "update", "move", "disable", "enable")
            if counts.get(k)
        )
        duration = ""
        if run.get("finished_at") and run.get("started_at"):
            duration = f"{run['finished_at'] - run['started_at']:.1f}s"
        rows.append(
            [
                item["source"],
                run.get("status", "never run"),
                (run.get("mode") or "") + (" (dry run)" if run.get("dry_run") else ""),
                _when(run.get("started_at")),
                duration,
                summary or "-",
                (run.get("error") or "")[:80],
            ]
        )
    print_table(["source", "status", "mode", "started", "took", "changes", "error"], rows)
    return 0


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + "Z"
