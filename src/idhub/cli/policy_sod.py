"""`idhub policy sod`, and the segregation-of-duties part of `policy check` and `policy diff`:
every violation of `sod.yaml`'s conflict rules among the directory's users, with each path
that grants each side as `file:line`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from idhub.cli._output import print_json
from idhub.core.authz.engine import Engine
from idhub.core.authz.model import Issue
from idhub.core.authz.sod_analysis import SodReport, Violation, analyse

EXIT_FAILED = 1


def violation_issues(report: SodReport) -> list[Issue]:
    """For `policy check`: a blocking violation is an error, a `warn` one a warning; one
    accepted by a valid exception is neither."""
    out: list[Issue] = []
    for v in report.violations:
        if v.accepted:
            continue
        out.append(
            Issue(
                "error" if v.blocking else "warning",
                f"segregation of duties: {v.summary()}",
                v.rule.source,
            )
        )
    return out


def print_violation(v: Violation, root: Path) -> None:
    print(f"{v.user}: {v.rule.id} [{'accepted' if v.accepted else v.rule.severity}]")
    print(f"  rule {root / v.rule.source.file}:{v.rule.source.line}: {v.rule.reason}")
    exc = v.exception or v.expired
    if exc is not None:
        state = "EXPIRED" if v.expired is not None else "valid"
        print(
            f"  exception ({state}, until {exc.expires}) approved by {exc.approved_by}: "
            f"{exc.reason} [{exc.source}]"
        )
    for side in v.sides:
        print(f"  {side}:")
        for path in v.paths.get(side, ()):
            print("    - " + "\n      ".join(path.steps()))


def cmd_sod(args: argparse.Namespace, engine: Engine, root: Path, *, now: float) -> int:
    report = analyse(engine, now=now)
    if engine.policy.sod is None:
        note = f"no {root / 'sod.yaml'}: no conflict rules"
    else:
        note = ""
    blocking = report.blocking
    if args.json:
        print_json(
            {
                "ok": not blocking,
                "policy_version": engine.version,
                "rules": len(engine.policy.sod.conflicts) if engine.policy.sod else 0,
                "users": sum(1 for u in engine.directory.users.values() if not u.disabled),
                "violations": [v.to_json() for v in report.violations],
                "note": note or None,
            }
        )
        return EXIT_FAILED if blocking else 0
    if note:
        print(f"note: {note}")
    for v in report.violations:
        print_violation(v, root)
    accepted = sum(1 for v in report.violations if v.accepted)
    print(
        f"{len(report.violations)} violation(s): {len(blocking)} blocking, "
        f"{len(report.violations) - len(blocking) - accepted} warning(s), "
        f"{accepted} accepted by exception; policy {engine.version}"
    )
    return EXIT_FAILED if blocking else 0


def sod_changes(old: Engine, new: Engine, *, now: float) -> dict[str, list[dict[str, Any]]]:
    """For `policy diff`: the violations the new policy adds and the ones it removes."""
    before = analyse(old, now=now).by_key()
    after = analyse(new, now=now).by_key()

    def state(v: Violation) -> str:
        return "accepted" if v.accepted else v.rule.severity

    added = [
        v.to_json()
        for key, v in sorted(after.items())
        if key not in before or state(before[key]) != state(v)
    ]
    removed = [
        v.to_json()
        for key, v in sorted(before.items())
        if key not in after or state(after[key]) != state(v)
    ]
    return {"added": added, "removed": removed}


def print_changes(changes: dict[str, list[dict[str, Any]]]) -> None:
    if not changes["added"] and not changes["removed"]:
        print("segregation of duties: no violation added or removed")
        return
    for sign, key in (("+", "added"), ("-", "removed")):
        for v in changes[key]:
            state = "accepted" if v["accepted"] else v["severity"]
            sides = " and ".join(str(s["side"]) for s in v["sides"])
            print(f"{sign} sod {v['rule']} [{state}] {v['user']}: {sides} ({v['source']})")
