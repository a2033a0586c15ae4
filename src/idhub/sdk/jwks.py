"""The issuer's signing keys, fetched from its JWKS and refreshed when a token names a key id
not seen yet (key rotation) — at most once per `min_refresh` seconds, so a flood of forged
key ids cannot turn into a flood of requests to idhub. The floor is short (1 s) because idhub
signs with a new key as soon as it is rotated in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet


class JwksError(Exception):
    pass


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
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")

    def keys_for(self, kid: str | None) -> KeySet:
        """The key set, refreshed first if it is stale or lacks `kid`."""
        now = self._clock()
        keys = self._keys
        stale = keys is None or now - self._fetched_at > self._max_age
        unknown = kid is not None and kid not in self._kids
        if stale or (unknown and now - self._fetched_at >= self._min_refresh):
            with self._lock:
                if self._keys is keys:  # nobody refreshed while we waited
                    self._fetch()
        if self._keys is None:
            raise JwksError(f"no signing keys could be loaded from {self._uri}")
        return self._keys

    def _fetch(self) -> None:
        try:
            response = self._http.get(self._uri)
            response.raise_for_status()
            document: Any = response.json()
            keys = KeySet.import_key_set(document)
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            if self._keys is None:
                raise JwksError(f"cannot load signing keys from {self._uri}: {exc}") from exc
            return  # keep serving the keys we have; the next refresh may succeed
        self._keys = keys
        self._kids = frozenset(str(k.get("kid")) for k in document.get("keys", []) if "kid" in k)
        self._fetched_at = self._clock()
