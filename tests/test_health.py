from __future__ import annotations

import httpx

from tests.conftest import LiveServer


def test_health_and_readiness(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["keys"] == "ok"


def test_a_replica_without_signing_keys_is_not_ready(live_server: LiveServer) -> None:
    ready = httpx.get(f"{live_server.url}/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
    assert ready.json()["checks"]["keys"].startswith("no active signing key")


def test_unknown_path_is_a_clean_404(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/nope", headers={"X-Request-ID": "req-12345678"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert response.headers["x-request-id"] == "req-12345678"
    page = httpx.get(f"{live_server.url}/nope", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert "<html" in page.text and "Traceback" not in page.text
