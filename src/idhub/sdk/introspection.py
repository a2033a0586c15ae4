"""Asking idhub whether an access token is still active (RFC 7662), for systems that must see
a revocation at once rather than when the token expires.

The system authenticates as its own client (usually the client id that is the token's
audience: idhub answers `active: false` for a token not addressed to the asker). An answer
may be remembered for `ttl` seconds (0, the default, asks on every use: instant revocation
costs one round trip per request). A failure to ask refuses the token (fail closed).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from idhub.sdk.errors import Revoked, VerifierUnavailable


class Introspection:
    def __init__(
        self,
        endpoint: str,
        *,
        client_id: str,
        client_secret: str,
        http: httpx.Client | None = None,
        ttl: float = 0.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self._auth = (client_id, client_secret)
        self._http = http or httpx.Client(timeout=5.0)
        self._ttl = ttl
        self._cache_size = cache_size
        self._clock = clock
        self._active: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def require_active(self, token: str, claims: Mapping[str, Any]) -> None:
        """Returns if idhub says the token is active and is the one validated; `Revoked`
        (or `VerifierUnavailable` when idhub cannot be asked) otherwise."""
        now = self._clock()
        if self._ttl > 0:
            until = self._active.get(token)
            if until is not None and until > now:
                return
        try:
            response = self._http.post(
                self.endpoint,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._auth,
            )
        except httpx.HTTPError as exc:
            raise VerifierUnavailable(f"introspection unreachable: {exc}") from exc
        if response.status_code != 200:
            raise VerifierUnavailable(f"introspection answered {response.status_code}")
        try:
            body: Any = response.json()
        except ValueError:
            raise VerifierUnavailable("introspection answered something other than JSON") from None
        if not isinstance(body, dict) or body.get("active") is not True:
            raise Revoked("idhub says the token is no longer active")
        if body.get("jti") not in (None, claims.get("jti")) or body.get("sub") not in (
            None,
            claims.get("sub"),
        ):
            raise Revoked("introspection describes another token")
        if self._ttl > 0:
            with self._lock:
                self._active[token] = now + self._ttl
                while len(self._active) > self._cache_size:
                    self._active.popitem(last=False)
