"""The revocation list with a copy in memory, so a token check survives a database outage.

Every check asks the database first (`revoked_tokens`). Beside it, each replica keeps the
unexpired revocations in memory, refreshed every couple of seconds by a background job. When
the database cannot be reached, the copy answers instead, as long as it is fresh enough
(`max_age`): a token revoked before the outage is still refused, and no revocation can be
made during it (revoking needs the database). What the copy can miss is a revocation made in
the last refresh interval before the outage began; past `max_age` the check fails (503)
rather than trust an old copy. This is what lets the decision API keep answering from its
loaded policy while the database is away.

`is_revoked_without_waiting` is for the event loop: it asks the probe the composition root
gave (on SQLite, the same table read on a connection that never waits, adapters/
revocation_probe.py) and answers None when there is none or it cannot answer, so the caller
asks `is_revoked` in a worker thread. The in-memory copy is never used for it: a copy
refreshed every couple of seconds would accept, for up to that long, a token another worker
or replica has revoked, which a check against the database does not.

`is_revoked_probing_first` is the two in one, for introspection: the probe's answer where it
has one (the same committed rows the store's query reads, without checking a connection out
of the pool and back in, which cost more than the query), `is_revoked` otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from idhub.core.clock import Clock
from idhub.errors import StorageUnavailable

log = logging.getLogger("idhub.oidc")

# Revocations another replica made are read with this much overlap: its clock may differ.
_OVERLAP = 30.0


class RevocationSource(Protocol):
    def is_revoked(self, jti: str) -> bool: ...

    def revoked_since(self, since: float, now: float) -> list[tuple[str, float]]: ...


class MirroredRevocations:
    def __init__(
        self,
        source: RevocationSource,
        clock: Clock,
        *,
        max_age: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        probe: Callable[[str], bool | None] | None = None,
    ) -> None:
        self._source = source
        self._probe = probe
        self._clock = clock
        self._max_age = max_age
        self._monotonic = monotonic
        self._revoked: dict[str, float] = {}  # jti -> expires_at
        self._since = 0.0
        self._refreshed_at: float | None = None  # monotonic
        self._lock = threading.Lock()
        self.answered_from_memory = 0

    def refresh_once(self) -> int:
        """Reads revocations since the last round; returns how many are held."""
        now = self._clock.now()
        found = self._source.revoked_since(self._since, now)
        with self._lock:
            for jti, expires_at in found:
                self._revoked[jti] = expires_at
            for jti in [j for j, exp in self._revoked.items() if exp <= now]:
                del self._revoked[jti]
            self._since = max(0.0, now - _OVERLAP)
            self._refreshed_at = self._monotonic()
            return len(self._revoked)

    def check_fresh(self) -> bool:
        at = self._refreshed_at
        return at is not None and self._monotonic() - at <= self._max_age

    def is_revoked(self, jti: str) -> bool:
        try:
            return self._source.is_revoked(jti)
        except StorageUnavailable:
            if not self.check_fresh():
                raise
            with self._lock:
                self.answered_from_memory += 1
                return jti in self._revoked

    def is_revoked_probing_first(self, jti: str) -> bool:
        """`is_revoked`'s answer, from the probe when it can give one."""
        found = self.is_revoked_without_waiting(jti)
        return self.is_revoked(jti) if found is None else found

    def is_revoked_without_waiting(self, jti: str) -> bool | None:
        """The database's answer if it can be had without blocking, else None."""
        return None if self._probe is None else self._probe(jti)
