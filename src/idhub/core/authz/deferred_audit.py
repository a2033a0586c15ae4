"""Decision records that wait out a database outage, so the decision API keeps answering.

Decisions are answered from the policy in memory; their audit records are not a state change,
so an outage need not stop them. When the trail cannot be written because the database is
away (`AuditUnavailable`), the records are held in memory, each stamped with when it was
decided (`decided_at`), and a background job appends them, in order, once the database is
back. Held records are bounded: past `limit` the oldest are dropped and counted. They are
lost if the process dies before the database returns; any other audit failure still fails
the request.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from idhub.core.audit import Auditor, PendingEvent
from idhub.core.clock import Clock
from idhub.errors import AuditUnavailable

log = logging.getLogger("idhub.authz")

_BATCH = 500


class DeferredDecisionAudit:
    def __init__(self, audit: Auditor, clock: Clock, *, limit: int = 100_000) -> None:
        self._audit = audit
        self._clock = clock
        self._held: deque[PendingEvent] = deque()
        self._limit = limit
        self._lock = threading.Lock()
        self.dropped = 0

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
        with self._lock:
            for event in events:
                if len(self._held) >= self._limit:
                    self._held.popleft()
                    self.dropped += 1
                self._held.append(replace(event, details={**event.details, "decided_at": now}))

    def flush_once(self) -> int:
        """Appends what is held, oldest first; returns how many were written."""
        written = 0
        while True:
            with self._lock:
                batch = [self._held[i] for i in range(min(_BATCH, len(self._held)))]
            if not batch:
                return written
            self._audit.record_many(batch)  # AuditError: stays held, the job retries
            with self._lock:
                for _ in batch:
                    self._held.popleft()
            written += len(batch)
