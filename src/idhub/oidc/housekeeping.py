"""A background thread per process that clears token rows that can no longer matter
(expired codes and refresh tokens, old revocations, used assertion ids), so the tables the
token endpoint reads stay small. Several replicas doing it at once is harmless."""

from __future__ import annotations

import logging
import threading

from idhub.core.clock import Clock
from idhub.core.token_storage import TokenPurge

log = logging.getLogger("idhub.oidc")


class TokenHousekeeping:
    def __init__(self, store: TokenPurge, clock: Clock, *, interval: float = 600.0) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> dict[str, int]:
        return self._store.purge(self._clock.now())

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="idhub-token-purge", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self) -> None:
        # Wait first: start-up is busy enough, and a restart loop must not purge in a burst.
        while not self._stop.wait(self._interval):
            try:
                removed = self.run_once()
            except Exception:  # housekeeping must never kill the worker
                log.exception("token housekeeping failed; will retry")
                continue
            if any(removed.values()):
                log.info("token housekeeping removed %s", removed)
