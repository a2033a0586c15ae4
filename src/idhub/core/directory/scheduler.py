"""The background sync of `idhub serve`: an incremental sync of every source each
`interval` seconds, a full reconcile each `full_interval` seconds.

Several replicas (or uvicorn workers) may all run this job; the per-source lease in the
database makes sure only one of them syncs a source at a time, the others skip that round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from idhub.core.clock import Clock
from idhub.errors import Conflict, IdhubError

log = logging.getLogger(__name__)


class SyncScheduler:
    """Decides, per source and round, between an incremental sync and a full reconcile; a
    server runs `run_due` as a background job every `interval` seconds."""

    def __init__(
        self,
        *,
        sources: Sequence[str],
        run: Callable[[str, bool], object],
        last_full_at: Callable[[str], float | None],
        clock: Clock,
        interval: float,
        full_interval: float,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sources = list(sources)
        self._run = run
        self._last_full_at = last_full_at
        self._clock = clock
        self._interval = max(1.0, interval)
        self._full_interval = max(self._interval, full_interval)
        # Checked between sources, so a shutdown does not wait for every source's round.
        self._stopping = stopping

    def run_due(self) -> None:
        for name in self._sources:
            if self._stopping():
                return
            last = self._last_full_at(name)
            full = last is None or self._clock.now() - last >= self._full_interval
            try:
                self._run(name, full)
            except Conflict:
                log.info("sync of %s skipped: another replica holds it", name)
            except IdhubError as exc:
                # Recorded as a failed run with its reason; the next round tries again.
                log.warning("sync of %s did not complete: %s", name, exc)
            except Exception:
                log.exception("sync of %s failed unexpectedly", name)
