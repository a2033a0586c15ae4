"""Liveness and readiness probes for load balancers and orchestrators. What counts as not
ready and what only degrades is decided in `core/readiness.py`."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.readiness import Readiness


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _answer(readiness: Readiness) -> Callable[[Request], JSONResponse]:
    def answer(request: Request) -> JSONResponse:
        # Synchronous: Starlette runs it in the threadpool, off the event loop.
        report = readiness.assess()
        headers = None if report.ready else {"Retry-After": "1"}
        return JSONResponse(
            report.to_json(), status_code=200 if report.ready else 503, headers=headers
        )

    return answer


def routes(services: Services) -> list[BaseRoute]:
    return [Route("/healthz", healthz), Route("/readyz", _answer(services.health))]
