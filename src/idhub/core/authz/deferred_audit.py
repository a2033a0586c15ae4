"""Decision records that wait out a database outage, so the decision API keeps answering.

Decisions are answered from the policy in memory; their audit records are not a state change,
so an outage need not stop them. When the trail cannot be written because the database is
away (`AuditUnavailable`), the records are held in memory, each stamped with when it was
decided (`decided_at`), and a background job appends them, in order, once the database is
back. Held records are bounded: past `limit` the oldest are dropped and counted. Any other
audit failure still fails the request.

With a `spool` (adapters/decision_spool.py in a server) every held record is also kept on
local disk before the decision is answered, so a process that dies during the outage loses
none of them: the next process to run the job on that disk appends what the dead one had not
settled. The spool mirrors the queue: records go in, in order, and each settles (appended, or
dropped past the bound) oldest first, so "the first N are settled" is all it has to know.
After a crash in the moment between an append and its settling, those records are appended
twice (at least once, never lost: docs/deployment.md); the copies carry the same
`decided_at`. A spool that cannot be written (disk full, read-only) is a warning, not a
refusal: the records are then held in memory only, as without one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

from idhub.core.audit import Auditor, PendingEvent
from idhub.core.clock import Clock
from idhub.errors import AuditUnavailable

log = logging.getLogger("idhub.authz")

_BATCH = 500


class LeftBehind(Protocol):
    """What a process that died left in a spool, claimed by this one."""

    def unsettled(self) -> Sequence[PendingEvent]: ...

    def settle(self, count: int) -> None: ...

    def done(self) -> None: ...


class HeldSpool(Protocol):
    def keep(self, events: Sequence[PendingEvent]) -> None:
        """Durably, after the kept ones; raises OSError if the disk would not have them."""

    def settle(self, count: int) -> None:
        """The oldest `count` unsettled records are appended or dropped."""

    def left_behind(self) -> Iterable[LeftBehind]:
        """Spools of processes no longer running, each claimed for this one."""

    def reset(self) -> None:
        """Nothing is held any more: forget every record kept so far."""


class DeferredDecisionAudit:
    def __init__(
        self,
        audit: Auditor,
        clock: Clock,
        *,
        limit: int = 100_000,
        spool: HeldSpool | None = None,
    ) -> None:
        self._audit = audit
        self._clock = clock
        self._held: deque[PendingEvent] = deque()
        self._limit = limit
        self._lock = threading.Lock()
        self._spool = spool
        # The spool's own records are in step with `_held` only while every keep succeeded.
        self._spooling = spool is not None
        self._orphans: list[LeftBehind] | None = None  # claimed once, on the first flush
        self.dropped = 0
        self.recovered = 0  # records appended from the spools of processes that died

    @property
    def held(self) -> int:
        return len(self._held)

    def record(self, events: Sequence[PendingEvent]) -> None:
        if not self._held:
            try:
                self._audit.record_many(events)
                return
            except AuditUnavailable:
                log.warning("decision audit deferred: the database cannot be reached")
        # Behind held records (or the database away): keep chain order, queue these too.
        now = self._clock.now()
        stamped = [replace(e, details={**e.details, "decided_at": now}) for e in events]
        with self._lock:
            # Under the lock: the spool's order is the queue's order.
            self._keep(stamped)
            dropped = 0
            for event in stamped:
                if len(self._held) >= self._limit:
                    self._held.popleft()
                    dropped += 1
                self._held.append(event)
            self.dropped += dropped
            if dropped:
                self._settle(dropped)

    def flush_once(self) -> int:
        """Appends what dead processes left in the spool, then what is held, oldest first;
        returns how many were written."""
        written = self._flush_left_behind()
        while True:
            with self._lock:
                batch = [self._held[i] for i in range(min(_BATCH, len(self._held)))]
                if not batch:
                    self._resume_spooling()
                    return written
            self._audit.record_many(batch)  # AuditError: stays held, the job retries
            with self._lock:
                for _ in batch:
                    self._held.popleft()
                self._settle(len(batch))
            written += len(batch)

    def _flush_left_behind(self) -> int:
        if self._spool is None:
            return 0
        if self._orphans is None:
            self._orphans = list(self._spool.left_behind())
        written = 0
        while self._orphans:
            orphan = self._orphans[0]
            pending = list(orphan.unsettled())
            for start in range(0, len(pending), _BATCH):
                batch = pending[start : start + _BATCH]
                self._audit.record_many(batch)  # AuditError: kept claimed, the job retries
                orphan.settle(len(batch))
                written += len(batch)
                self.recovered += len(batch)
            orphan.done()
            self._orphans.pop(0)
            log.warning("decision audit: appended %d records a stopped process held", len(pending))
        return written

    def _keep(self, events: Sequence[PendingEvent]) -> None:
        self._to_spool(lambda spool: spool.keep(events))

    def _settle(self, count: int) -> None:
        self._to_spool(lambda spool: spool.settle(count))

    def _to_spool(self, step: Callable[[HeldSpool], None]) -> None:
        if not self._spooling or self._spool is None:
            return
        try:
            step(self._spool)
        except OSError as exc:
            # Out of step from here on: what is settled can no longer be told to it.
            self._spooling = False
            log.warning("decision audit: held in memory only, the spool failed: %s", exc)

    def _resume_spooling(self) -> None:
        # Nothing held: a spool that failed earlier can start afresh, in step again.
        if self._spooling or self._spool is None:
            return
        try:
            self._spool.reset()
        except OSError:
            return  # still failing: the next empty flush tries again
        self._spooling = True
