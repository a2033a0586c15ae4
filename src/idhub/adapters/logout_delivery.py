"""Back-Channel Logout over HTTP, and the parallel delivery a background job (re)tries.

OpenID Connect Back-Channel Logout 1.0 §2.5: the OP POSTs `logout_token=<JWT>` as
`application/x-www-form-urlencoded` to the RP's `backchannel_logout_uri`; the RP answers 200
(many answer 204, which we accept too). CAS single logout posts `logoutRequest=<xml>` the same
way to the service URL. Anything else, a timeout or a refused connection is a
failed attempt that the worker retries with backoff (see `core/logout.py`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from idhub.core.logout import DeliveryFailed, LogoutService

if TYPE_CHECKING:
    # httpx is imported on the first delivery: importing it loads its command line too (click,
    # rich, Pygments), which a worker that never sends a logout should not carry.
    import httpx

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0


class HttpLogoutChannel:
    def __init__(
        self, *, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT
    ) -> None:
        self._timeouts = (read_timeout, connect_timeout)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._client is None:
                read, connect = self._timeouts
                # No redirects: a logout token goes to the registered URI and nowhere else.
                self._client = httpx.Client(
                    timeout=httpx.Timeout(read, connect=connect), follow_redirects=False
                )
            return self._client

    def post(self, uri: str, logout_token: str) -> None:
        self.send(uri, {"logout_token": logout_token})

    def send(self, uri: str, fields: Mapping[str, str]) -> None:
        import httpx

        try:
            response = self._http().post(
                uri,
                data=dict(fields),
                headers={"Cache-Control": "no-store", "Accept": "application/json"},
            )
        except httpx.TimeoutException:
            raise DeliveryFailed("timed out") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:200]) from None
        if response.status_code not in (200, 204):
            raise DeliveryFailed(f"HTTP {response.status_code}")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class DeliveryWorker:
    """Delivers due logout tokens, several at a time; a server runs `deliver_due` as a
    background job, woken at once when a logout queued some (`LogoutService.on_queued`) and
    otherwise every couple of seconds (for retries and other replicas' logouts)."""

    def __init__(self, service: LogoutService, *, parallel: int = 4) -> None:
        self._service = service
        self._parallel = parallel

    def deliver_due(self) -> int:
        """One attempt at every due delivery; returns how many were attempted."""
        due = self._service.claim_due()
        if not due:
            return 0
        # Deliveries to different systems go out in parallel, so one slow RP does not hold
        # up the others.
        with ThreadPoolExecutor(
            min(self._parallel, len(due)), thread_name_prefix="idhub-logout"
        ) as pool:
            list(pool.map(self._service.attempt, due))
        return len(due)
