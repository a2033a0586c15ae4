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
    """`/readyz`: the database answers and every area's probe says "ok" (else 503). Warnings,
    such as a background job failing, are listed in the body ("degraded") without failing it."""

    def __init__(
        self,
        *,
        database_ping: Callable[[], bool],
        probes: Mapping[str, Callable[[], str]],
        warnings: Callable[[], list[str]],
    ) -> None:
        self._database_ping = database_ping
        self._probes = probes
        self._warnings = warnings

    def answer(self, request: Request) -> JSONResponse:
        # Synchronous: Starlette runs it in the threadpool, off the event loop.
        checks = {"database": "ok" if self._database_ping() else "unreachable"}
        for name, probe in self._probes.items():
            checks[name] = probe()
        ready = all(value == "ok" for value in checks.values())
        warnings = self._warnings()
        status = ("degraded" if warnings else "ready") if ready else "not_ready"
        return JSONResponse(
            {"status": status, "checks": checks, "warnings": warnings},
            status_code=200 if ready else 503,
        )


def routes(services: Services) -> list[BaseRoute]:
    readiness = Readiness(
        database_ping=services.database_ping,
        probes=services.readiness_checks,
        warnings=services.runtime.warnings,
    )
    return [Route("/healthz", healthz), Route("/readyz", readiness.answer)]
