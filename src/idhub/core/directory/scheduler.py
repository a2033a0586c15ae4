"""The background loop of `idhub serve`: an incremental sync of every source each
`interval` seconds, a full reconcile each `full_interval` seconds.

Several replicas (or uvicorn workers) may all run this loop; the per-source lease in the
database makes sure only one of them syncs a source at a time, the others skip that round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from idhub.core.clock import Clock
from idhub.errors import Conflict, IdhubError

log = logging.getLogger(__name__)


class SyncScheduler:
    def __init__(
        self,
        *,
        sources: Sequence[str],
        run: Callable[[str, bool], object],
        last_full_at: Callable[[str], float | None],
        clock: Clock,
        interval: float,
        full_interval: float,
    ) -> None:
        self._sources = list(sources)
        self._run = run
        self._last_full_at = last_full_at
        self._clock = clock
        self._interval = max(1.0, interval)
        self._full_interval = max(self._interval, full_interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._sources or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="idhub-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_once(self) -> None:
        for name in self._sources:
            if self._stop.is_set():
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

    def _loop(self) -> None:
        # A short pause first so start-up (migrations, key loading) is not slowed down.
        if self._stop.wait(min(5.0, self._interval)):
            return
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)
