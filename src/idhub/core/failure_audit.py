"""Failure events of requests anyone may send, written within the per-address budget.

A refused password attempt, a refused or failed client at `/token`, a bad CAS ticket, a
rejected SAML request: each is answered exactly as the protocol says, and each used to write
one audit event, so a loop of them from one address filled the audit trail. Here the event
goes through `RequestBudget.admit` (core/request_budget.py): the first `anonymous_writes` per
source and window are written as they always were; the rest are not, and every window that
suppressed any is closed by one `audit.suppressed` event naming the kind, the source and how
many of which event were left out. The summaries are written with the next failure event, by
the background job (`flush_expired`, every few seconds) or at shutdown (`flush_all`).

Only failure paths call this; a success never spends or waits on the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from idhub.core.audit import Actor, Auditor, EventType, PendingEvent
from idhub.core.request_budget import RequestBudget, Suppressed


@dataclass(frozen=True)
class FailureWrite:
    """What the budget decided for one failure event, for a caller that writes it in its own
    transaction: the summaries due and the event itself if the source had budget left.

    The summaries were taken out of the budget by the decision, so a caller whose transaction
    did not commit hands the write back (`FailureAudit.not_written`) rather than losing the
    only count of what they suppressed; and a caller whose transaction may run its decision
    again (a group commit retrying a failed batch one by one) keeps the write it got the
    first time (`again`) rather than spending the source's budget twice."""

    summaries: tuple[Suppressed, ...] = ()
    event: PendingEvent | None = None

    @property
    def events(self) -> list[PendingEvent]:
        summaries = [summary_event(s) for s in self.summaries]
        return summaries if self.event is None else [*summaries, self.event]

    def again(self, event: PendingEvent) -> FailureWrite:
        """The same admission for the event of a retried decision (same summaries, written
        or not as the first time)."""
        return FailureWrite(self.summaries, None if self.event is None else event)


class FailureAudit:
    def __init__(self, audit: Auditor, budget: RequestBudget) -> None:
        self._audit = audit
        self._budget = budget

    def admit(self, kind: str, event: PendingEvent) -> FailureWrite:
        """What to write for `event` (a failure of `kind`): the event if the source has budget
        left, after the summaries of windows that closed meanwhile; maybe nothing. For a
        caller that writes them in its own transaction (and calls `not_written` if it did
        not commit)."""
        summaries, record = self._admit(kind, event)
        return FailureWrite(tuple(summaries), event if record else None)

    def not_written(self, write: FailureWrite) -> None:
        """A write from `admit` whose transaction rolled back: its summaries go out with the
        next write instead."""
        self._budget.requeue(write.summaries)

    def record(self, kind: str, event: PendingEvent) -> None:
        """Writes what `events` says, in one commit; AuditError as `Auditor.record` raises,
        and the summaries are kept for the next write."""
        summaries, record = self._admit(kind, event)
        self._write(summaries, [event] if record else [])

    def flush_expired(self) -> int:
        """Writes the summaries of windows that ended; how many."""
        return self._write(self._budget.close_expired())

    def flush_all(self) -> int:
        """Writes the summaries of every window that suppressed events so far (at shutdown)."""
        return self._write(self._budget.close_all())

    def _admit(self, kind: str, event: PendingEvent) -> tuple[list[Suppressed], bool]:
        address = event.ctx.client_ip if event.ctx is not None else None
        admission = self._budget.admit(kind, address, event.event_type.value)
        return list(admission.summaries), admission.record

    def _write(self, summaries: list[Suppressed], events: Sequence[PendingEvent] = ()) -> int:
        written = [summary_event(s) for s in summaries] + list(events)
        if not written:
            return 0
        try:
            self._audit.record_many(written)
        except Exception:
            # A summary is the only trace of what it counts: it waits for the next write.
            self._budget.requeue(summaries)
            raise
        return len(written)


def summary_event(summary: Suppressed) -> PendingEvent:
    return PendingEvent(
        EventType.AUDIT_SUPPRESSED,
        actor=Actor.system(),
        target=summary.kind,
        outcome="failure",
        details={
            "kind": summary.kind,
            # The address (IPv6: its /64) the events came from, as the budget counts it.
            "source": summary.source,
            "since": round(summary.since, 3),
            "until": round(summary.until, 3),
            "limit": summary.limit,
            "suppressed": dict(summary.counts),
            "total": sum(n for _, n in summary.counts),
        },
    )
