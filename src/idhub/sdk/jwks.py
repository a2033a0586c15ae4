"""The issuer's signing keys, fetched from its JWKS and refreshed when a token names a key id
not seen yet (key rotation) — at most once per `min_refresh` seconds, so a flood of forged
key ids cannot turn into a flood of requests to idhub. The floor is short (1 s) because idhub
signs with a new key as soon as it is rotated in. Keys idhub cannot sign with (another type,
`use: enc`) are skipped; a key set that cannot be read keeps the keys already held."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from idhub.sdk.errors import UnknownKey, VerifierUnavailable
from idhub.sdk.jws import PublicKey, import_jwk

# A key set larger than this is not idhub's.
MAX_KEYS = 100
log = logging.getLogger("idhub.sdk.jwks")


class JwksCache:
    def __init__(
        self,
        jwks_uri: str,
        *,
        http: httpx.Client | None = None,
        max_age: float = 300.0,
        min_refresh: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uri = jwks_uri
        self._http = http or httpx.Client(timeout=5.0)
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")

    def key(self, kid: str | None) -> PublicKey:
        """The key named `kid`, refreshing the set first if it is stale or lacks `kid`."""
        keys = self._keys
        now = self._clock()
        if keys is not None and kid is not None:
            found = keys.get(kid)
            if found is not None and now - self._fetched_at <= self._max_age:
                return found
        # Unknown kid, stale set or nothing loaded yet: one attempt per floor, whoever asks.
        if now - self._attempted_at >= self._min_refresh:
            with self._lock:
                if now - self._attempted_at >= self._min_refresh:
                    self._fetch(now)
        keys = self._keys
        if keys is None:
            raise VerifierUnavailable(f"no signing keys could be loaded from {self._uri}")
        if kid is None:
            raise UnknownKey("the token names no key id (kid)")
        found = keys.get(kid)
        if found is None:
            raise UnknownKey(f"key {kid!r} is not in the issuer's key set")
        return found

    def _fetch(self, now: float) -> None:
        self._attempted_at = now
        try:
            response = self._http.get(self._uri)
            response.raise_for_status()
            keys = _read(response.json())
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            if self._keys is None:
                raise VerifierUnavailable(
                    f"cannot load signing keys from {self._uri}: {exc}"
                ) from exc
            return  # keep serving the keys we have; the next refresh may succeed
        self._keys = keys
        self._fetched_at = self._clock()


def _read(document: Any) -> dict[str, PublicKey]:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_KEYS:
        raise ValueError("not a JWKS document")
    keys: dict[str, PublicKey] = {}
    for entry in entries:
        try:
            key = import_jwk(entry) if isinstance(entry, dict) else None
        except ValueError as exc:
            # One unusable key (too short, broken) must not take the others down with it;
            # tokens it signed meet `UnknownKey`.
            log.warning("skipping a key of the issuer's JWKS: %s", exc)
            continue
        if key is not None:
            keys[key.kid] = key
    return keys
