"""Clears token rows that can no longer matter (expired codes and refresh tokens, old
revocations, used assertion ids), so the tables the token endpoint reads stay small. A server
runs `purge_once` as a background job; several replicas doing it at once is harmless."""

from __future__ import annotations

import logging

from idhub.core.clock import Clock
from idhub.core.token_storage import TokenPurge

log = logging.getLogger("idhub.oidc")


class TokenHousekeeping:
    def __init__(self, store: TokenPurge, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def purge_once(self) -> dict[str, int]:
        removed = self._store.purge(self._clock.now())
        if any(removed.values()):
            log.info("token housekeeping removed %s", removed)
        return removed
