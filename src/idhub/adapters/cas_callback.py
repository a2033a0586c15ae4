"""The CAS proxy callback over HTTP: idhub GETs the proxy's `pgtUrl` with `pgtId` and `pgtIou`
(CAS 3.0 §2.5.4). Certificates are verified and redirects are not followed, so a
proxy-granting ticket only reaches the URL the service registered."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # httpx is imported on the first callback: with it come its command line's click, rich and
    # Pygments (~10 MB), which a worker that never proxies a CAS ticket should not carry.
    import httpx

log = logging.getLogger("idhub.cas")

READ_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0


class HttpProxyCallback:
    def __init__(
        self, *, read_timeout: float = READ_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        self._timeouts = (read_timeout, connect_timeout)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        import httpx

        with self._lock:
            if self._client is None:
                read, connect = self._timeouts
                self._client = httpx.Client(
                    timeout=httpx.Timeout(read, connect=connect), follow_redirects=False
                )
            return self._client

    def deliver(self, url: str, *, pgt_id: str, pgt_iou: str) -> bool:
        import httpx

        try:
            response = self._http().get(url, params={"pgtId": pgt_id, "pgtIou": pgt_iou})
        except httpx.HTTPError as exc:
            log.warning("CAS proxy callback failed: %s", type(exc).__name__)
            return False
        return response.status_code == 200

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
