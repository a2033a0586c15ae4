"""The CAS proxy callback over HTTP: idhub GETs the proxy's `pgtUrl` with `pgtId` and `pgtIou`
(CAS 3.0 §2.5.4). Certificates are verified and redirects are not followed, so a
proxy-granting ticket only reaches the URL the service registered."""

from __future__ import annotations

import logging
import threading

import httpx

log = logging.getLogger("idhub.cas")

TIMEOUT = httpx.Timeout(5.0, connect=3.0)


class HttpProxyCallback:
    def __init__(self, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self._timeout = timeout
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout, follow_redirects=False)
            return self._client

    def deliver(self, url: str, *, pgt_id: str, pgt_iou: str) -> bool:
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
