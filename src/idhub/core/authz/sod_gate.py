"""What a policy reload does with segregation of duties: refuse a policy that adds a `block`
violation without an exception, and record in the audit trail the violations, exceptions
granted and exceptions expired that a new policy brings.

"Adds" is measured against the policy serving in this process; a process serving nothing
yet (start-up, `idhub policy reload` from the command line) measures against the last good
copy when one loads, so a violation the directory already had does not block an unrelated
policy edit, while a new `sod.yaml` rule or role grant that creates one does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.authz.build import Outcome
from idhub.core.authz.sod_analysis import SodReport, Violation, added_blocking, analyse

# Audit events per reload: a policy that suddenly puts thousands of people in conflict is
# summarised after this many (the count is in the last event).
MAX_EVENTS = 1000


def report_for(outcome: Outcome, *, now: float) -> SodReport | None:
    if outcome.engine is None or outcome.engine.policy.sod is None:
        return None
    # Paths only where they are shown: the blocking errors and the audit events.
    return analyse(outcome.engine, now=now, paths=False)


def gate(
    outcome: Outcome, report: SodReport | None, baseline: SodReport | None, *, now: float
) -> Outcome:
    """`outcome` unless its policy adds blocking violations; then a rejected outcome naming
    each one with the rule's file:line."""
    if report is None:
        return outcome
    added = added_blocking(report, baseline, now=now)
    if not added:
        return outcome
    errors = tuple(
        f"{v.rule.source}: error: blocking violation added: {v.summary()}" for v in added
    )
    return dataclasses.replace(outcome, engine=None, errors=outcome.errors + errors)


def _details(v: Violation) -> dict[str, Any]:
    exc = v.exception or v.expired
    return {
        "rule": v.rule.id,
        "user": v.user,
        "severity": v.rule.severity,
        "sides": [str(s) for s in v.sides],
        "source": str(v.rule.source),
        "paths": {str(s): [p.to_json()["text"] for p in v.paths.get(s, ())][:5] for s in v.sides},
        **(
            {
                "approved_by": exc.approved_by,
                "expires": exc.expires,
                "exception": str(exc.source),
            }
            if exc is not None
            else {}
        ),
    }


def audit_events(
    report: SodReport, previous: SodReport | None, *, actor: Actor, version: str, now: float
) -> list[PendingEvent]:
    """Violations new since `previous`, exceptions newly in force and newly expired."""
    before = previous.by_key() if previous is not None else {}
    events: list[PendingEvent] = []
    for v in report.violations:
        old = before.get(v.key)
        kind: EventType | None = None
        if v.accepted and (old is None or not old.accepted):
            kind = EventType.SOD_EXCEPTION_GRANTED
        elif v.expired is not None and (old is None or old.expired is None):
            kind = EventType.SOD_EXCEPTION_EXPIRED
        elif old is None and not v.accepted:
            kind = EventType.SOD_VIOLATION
        if kind is None:
            continue
        if len(events) < MAX_EVENTS:
            v = report.with_paths(v, now=now)
        details = {**_details(v), "policy_version": version}
        granted = kind is EventType.SOD_EXCEPTION_GRANTED
        events.append(
            PendingEvent(
                kind, actor, f"sod:{v.rule.id}", "success" if granted else "denied", details
            )
        )
    if len(events) > MAX_EVENTS:
        rest = len(events) - MAX_EVENTS + 1
        events = events[: MAX_EVENTS - 1]
        events.append(
            PendingEvent(
                EventType.SOD_VIOLATION,
                actor,
                "sod",
                "denied",
                {"more": rest, "policy_version": version, "see": "idhub policy sod"},
            )
        )
    return events
