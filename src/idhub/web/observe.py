"""Per-request metrics and the structured access record.

The request layer (web/middleware.py) times every request from its first byte to the end of
its answer and reports it here under the route *template* (`/api/v1/decisions`, never the
raw path: ids, codes and typos must not become label values or log fields), the method and
the status. With
`log_format = "json"` it also writes one `idhub.access` record per request: request id,
route, method, status, latency and the client id the OAuth layer noted (`state.client_id`).
The query string is never logged: it carries codes, state and tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import parse_qs

from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Scope

from idhub.core.metrics import Metrics

access_log = logging.getLogger("idhub.access")

UNMATCHED = "unmatched"


def route_templates(routes: Iterable[BaseRoute]) -> dict[object, str]:
    """endpoint -> its path template, for the routes the router sets `scope["endpoint"]` to."""
    templates: dict[object, str] = {}
    for route in routes:
        if isinstance(route, Route):
            templates.setdefault(route.endpoint, route.path)
    return templates


class RequestObserver:
    """Counts and times answered requests; called once per request by the request layer
    (web/middleware.py) when the request is over, whatever its outcome."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        templates: dict[object, str],
        mounts: tuple[str, ...] = (),
        access_records: bool = False,
    ) -> None:
        self._metrics = metrics
        self._templates = templates
        self._mounts = mounts
        self._access = access_records
        self._requests = metrics.tally(
            "idhub_http_requests_total", "idhub_http_request_duration_seconds"
        )
        self._flush_due = False
        # (endpoint, method, status) -> the label values: built once per kind of answer.
        self._labels: dict[tuple[object, str, int], tuple[str, str, str]] = {}

    def _route(self, scope: Scope) -> str:
        endpoint = scope.get("endpoint")
        if endpoint is not None:
            return self._templates.get(endpoint, UNMATCHED)
        root = scope.get("root_path", "")
        for mount in self._mounts:
            if root.endswith(mount):
                return mount + "/{path}"
        return UNMATCHED

    def report(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = scope.get("endpoint")
        method = str(scope.get("method", ""))
        key = (endpoint, method, status)
        try:
            labels = self._labels.get(key) if endpoint is not None else None
        except TypeError:  # an endpoint that cannot be a dict key: not remembered
            labels = endpoint = None
        if labels is None:
            labels = (self._route(scope), method, str(status))
            if endpoint is not None and len(self._labels) < _MAX_LABELS:
                self._labels[key] = labels
        self._requests.add(labels, seconds)
        self._flush_soon()
        if self._access:
            route = labels[0]
            code = labels[2]
            state = scope.get("state", {})
            access_log.info(
                "%s %s %s",
                method,
                route,
                code,
                extra={
                    "request_id": state.get("request_id"),
                    "route": route,
                    "method": method,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                    "client_id": state.get("client_id") or _query_client_id(scope),
                    "client_ip": state.get("client_ip"),
                },
            )

    def _flush_soon(self) -> None:
        """The requests' counts reach the metric values at the end of this event-loop turn:
        the requests a turn answers are written together (adapters/prometheus_metrics.py)."""
        if self._flush_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop: nothing would run a later flush
            self._requests.flush()
            return
        self._flush_due = True
        loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        self._requests.flush()


# Label sets are bounded by the routes, methods and statuses; this only caps the memo.
_MAX_LABELS = 4096


def _query_client_id(scope: Scope) -> str | None:
    """`client_id` from the query string (the authorization endpoint's GET), if any."""
    query: bytes = scope.get("query_string", b"")
    if query.find(b"client_id=") < 0:  # not `in`: see web/limits.py `check_nul_free`
        return None
    values = parse_qs(query.decode("latin-1")).get("client_id")
    return values[0][:200] if values else None


def mount_prefixes(routes: Iterable[BaseRoute]) -> tuple[str, ...]:
    return tuple(route.path for route in routes if isinstance(route, Mount))
