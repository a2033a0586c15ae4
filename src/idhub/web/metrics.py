"""`/metrics`: the Prometheus text, open or behind a bearer token (`[metrics] token`)."""

from __future__ import annotations

import hmac

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
from idhub.core.secret import Secret


class MetricsEndpoint:
    def __init__(self, services: Services, token: Secret | None) -> None:
        self._services = services
        self._token = token.reveal().encode() if token is not None else None

    async def answer(self, request: Request) -> Response:
        if self._token is not None and not self._authorized(request):
            return PlainTextResponse(
                "a bearer token is required\n",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        prom = self._services.prometheus
        if prom is None:
            return PlainTextResponse("metrics are disabled\n", status_code=404)
        # Scrape-time values read the database: off the event loop.
        body, content_type = await run_in_threadpool(prom.exposition)
        return Response(body, headers={"Content-Type": content_type})

    def _authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        assert self._token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self._token
        )


def routes(services: Services) -> list[BaseRoute]:
    if not services.settings.metrics.enabled:
        return []
    endpoint = MetricsEndpoint(services, services.settings.metrics.token)
    return [Route("/metrics", endpoint.answer, methods=["GET"])]
