"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


class Readiness:
    """`/readyz`: the database answers and every area's probe says "ok"."""

    def __init__(
        self, *, database_ping: Callable[[], bool], probes: Mapping[str, Callable[[], str]]
    ) -> None:
        self._database_ping = database_ping
        self._probes = probes

    def answer(self, request: Request) -> JSONResponse:
        # Synchronous: Starlette runs it in the threadpool, off the event loop.
        checks = {"database": "ok" if self._database_ping() else "unreachable"}
        for name, probe in self._probes.items():
            checks[name] = probe()
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )


def routes(services: Services) -> list[BaseRoute]:
    readiness = Readiness(database_ping=services.database_ping, probes=services.readiness_checks)
    return [Route("/healthz", healthz), Route("/readyz", readiness.answer)]
