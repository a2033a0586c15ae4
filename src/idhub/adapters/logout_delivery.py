"""Back-Channel Logout over HTTP, and the background worker that (re)tries deliveries.

OpenID Connect Back-Channel Logout 1.0 §2.5: the OP POSTs `logout_token=<JWT>` as
`application/x-www-form-urlencoded` to the RP's `backchannel_logout_uri`; the RP answers 200
(many answer 204, which we accept too). CAS single logout posts `logoutRequest=<xml>` the same
way to the service URL. Anything else, a timeout or a refused connection is a
failed attempt that the worker retries with backoff (see `core/logout.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx

from idhub.core.logout import DeliveryFailed, LogoutService

log = logging.getLogger("idhub.logout")

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0


class HttpLogoutChannel:
    def __init__(
        self, *, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT
    ) -> None:
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                # No redirects: a logout token goes to the registered URI and nowhere else.
                self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
            return self._client

    def post(self, uri: str, logout_token: str) -> None:
        self.send(uri, {"logout_token": logout_token})

    def send(self, uri: str, fields: Mapping[str, str]) -> None:
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
    """A daemon thread that delivers due logout tokens, woken at once when a logout queued
    some and otherwise polling every `interval` seconds (for retries and other replicas)."""

    def __init__(
        self,
        service: LogoutService,
        *,
        interval: float = 2.0,
        parallel: int = 4,
        housekeeping: Callable[[], object] | None = None,
        housekeeping_interval: float = 3600.0,
    ) -> None:
        self._service = service
        # Old ended sessions are removed from the same thread, about once an hour.
        self._housekeeping = housekeeping
        self._housekeeping_interval = housekeeping_interval
        self._next_housekeeping = time.monotonic() + 60.0
        self._interval = interval
        self._parallel = parallel
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        service.on_queued(self._wake.set)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="idhub-logout-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        with ThreadPoolExecutor(self._parallel, thread_name_prefix="idhub-logout") as pool:
            while not self._stop.is_set():
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                try:
                    due = self._service.claim_due()
                    # Deliveries to different systems go out in parallel, so one slow RP
                    # does not hold up the others.
                    list(pool.map(self._service.attempt, due))
                except Exception:  # the worker outlives a database hiccup; it retries later
                    log.exception("logout delivery pass failed")
                self._maybe_housekeep()

    def _maybe_housekeep(self) -> None:
        if self._housekeeping is None or time.monotonic() < self._next_housekeeping:
            return
        self._next_housekeeping = time.monotonic() + self._housekeeping_interval
        try:
            self._housekeeping()
        except Exception:
            log.exception("session housekeeping failed")
