"""What idhub counts and measures, and the port it reports through.

The core never imports a metrics library: parts call a `Metrics` (counters, histograms,
gauges by name and label values) and `bootstrap` hands them the Prometheus adapter
(`adapters/prometheus_metrics.py`) or `NO_METRICS`. The catalogue below is the one list of
metric names; the adapter declares exactly these, so a name typed wrong fails at once.

Most business counters are derived from the audit trail (`count_audit_events`): every token,
failed sign-in and refresh-reuse alarm is already one event, so counting a committed batch
of events (`count_audit_events`) costs a function call per event and one write per counter
moved, and cannot drift from what the trail says happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Kind = Literal["counter", "histogram", "gauge"]

# Seconds; the request and decision latencies of an identity provider live mostly in 1-100 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)
SYNC_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec(
        "idhub_http_requests_total",
        "counter",
        "HTTP requests answered, by route template, method and status",
        ("route", "method", "status"),
    ),
    MetricSpec(
        "idhub_http_request_duration_seconds",
        "histogram",
        "Time from the first byte of a request to the end of its answer",
        ("route", "method", "status"),
    ),
    MetricSpec(
        "idhub_tokens_issued_total",
        "counter",
        "Tokens handed out, by grant type and client",
        ("grant_type", "client_id"),
    ),
    MetricSpec(
        "idhub_signin_failures_total",
        "counter",
        "Refused sign-ins by reason (bad_password, unknown_user, locked, throttled, ...)",
        ("reason",),
    ),
    MetricSpec(
        "idhub_refresh_reuse_detected_total",
        "counter",
        "Superseded refresh tokens presented again (the family is revoked)",
        ("client_id",),
    ),
    MetricSpec(
        "idhub_policy_reloads_total",
        "counter",
        "Policy reloads by result (accepted, rejected)",
        ("result",),
    ),
    MetricSpec(
        "idhub_decisions_total",
        "counter",
        "Authorization decisions by domain and result (allow, deny)",
        ("domain", "result"),
    ),
    MetricSpec(
        "idhub_decision_duration_seconds",
        "histogram",
        "Time to decide one authorization question",
        ("domain",),
        FAST_BUCKETS,
    ),
    MetricSpec(
        "idhub_sync_runs_total",
        "counter",
        "Directory sync runs by source and outcome (succeeded, aborted, failed)",
        ("source", "outcome"),
    ),
    MetricSpec(
        "idhub_sync_duration_seconds",
        "histogram",
        "Duration of directory sync runs",
        ("source",),
        SYNC_BUCKETS,
    ),
    MetricSpec(
        "idhub_sync_changes_total",
        "counter",
        "Directory changes applied by source and kind (create, update, move, disable, enable)",
        ("source", "kind"),
    ),
    MetricSpec(
        "idhub_audit_append_duration_seconds",
        "histogram",
        "Time to append a batch of audit events durably (one transaction)",
        (),
        FAST_BUCKETS,
    ),
    MetricSpec(
        "idhub_db_connections_in_use",
        "gauge",
        "Database connections checked out of this process's pool",
    ),
)

SPECS: Mapping[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}

# Values read when Prometheus scrapes, not on a request path: name -> (help, reader). A reader
# returns one value, or {label value: value} for metrics with one label (see `Gauges`).
GaugeReader = Callable[[], float | Mapping[str, float] | None]


@dataclass(frozen=True)
class ScrapeGauge:
    name: str
    help: str
    read: GaugeReader
    label: str = ""


class Tally(Protocol):
    """A counter and a histogram of the catalogue with the same labels, fed together: one
    `add(labels, value)` adds 1 to the counter and records `value` in the histogram. What is
    added may be held back until `flush` (see `Metrics.tally`)."""

    def add(self, labels: tuple[str, ...], value: float) -> None: ...

    def flush(self) -> None:
        """Writes what `add` held back."""
        ...


class Metrics(Protocol):
    def tally(self, counter: str, histogram: str) -> Tally:
        """A `Tally` of `counter` and `histogram` (same label names). Its additions may be held
        in the process until `flush`, which the caller must call soon after (the request layer
        does at the end of the event loop's turn); the exposition includes what is held."""
        ...

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        """Adds to a counter (or gauge) of the catalogue; labels in the spec's order."""
        ...

    def observe(self, name: str, value: float, *labels: str) -> None:
        """Records one value in a histogram of the catalogue."""
        ...

    def add_scrape_gauge(self, gauge: ScrapeGauge) -> None:
        """Registers a value computed when metrics are read (sessions, lag, offsets)."""
        ...


class _NoTally:
    def add(self, labels: tuple[str, ...], value: float) -> None:
        pass

    def flush(self) -> None:
        pass


class NoMetrics:
    """The default: counts nothing (the CLI, and servers with `[metrics] enabled = false`)."""

    def tally(self, counter: str, histogram: str) -> Tally:
        return _NoTally()

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        pass

    def observe(self, name: str, value: float, *labels: str) -> None:
        pass

    def add_scrape_gauge(self, gauge: ScrapeGauge) -> None:
        pass


NO_METRICS = NoMetrics()


def clock() -> float:
    """Seconds on a monotonic, high-resolution clock, for the durations observed here."""
    return time.perf_counter()


_TOKEN_EVENTS = frozenset({"token.issued", "token.refreshed", "token.exchanged"})
_SIGNIN_FAILURES = frozenset({"login.failed", "login.throttled", "mfa.failed"})


AuditCount = tuple[str, tuple[str, ...]]
"""A counter of the catalogue and its label values (in the spec's order)."""


def audit_counter(
    event_type: str, actor_id: str | None, details: Mapping[str, Any]
) -> AuditCount | None:
    """The counter and labels one audit event moves by 1, or None for an event not counted."""
    if event_type in _TOKEN_EVENTS:
        return "idhub_tokens_issued_total", (
            str(details.get("grant_type", "unknown")),
            str(details.get("client_id") or actor_id or "unknown"),
        )
    if event_type in _SIGNIN_FAILURES:
        reason = details.get("reason") or ("second_factor" if event_type == "mfa.failed" else "")
        return "idhub_signin_failures_total", (str(reason or "unknown"),)
    if event_type == "token.refresh_reuse_detected":
        return "idhub_refresh_reuse_detected_total", (
            str(details.get("client_id") or actor_id or "unknown"),
        )
    if event_type == "policy.reloaded":
        return "idhub_policy_reloads_total", ("accepted",)
    if event_type == "policy.rejected":
        return "idhub_policy_reloads_total", ("rejected",)
    return None


def count_audit_event(
    metrics: Metrics, event_type: str, actor_id: str | None, details: Mapping[str, Any]
) -> None:
    """Turns one audit event into the counter it stands for."""
    counted = audit_counter(event_type, actor_id, details)
    if counted is not None:
        metrics.inc(counted[0], *counted[1])


def count_audit_events(
    metrics: Metrics, events: Iterable[tuple[str, str | None, Mapping[str, Any]]]
) -> None:
    """Counts a committed batch of audit events, each as (event type, actor id, details):
    one `inc` per (counter, labels) by the number of its events. Under `serve --workers N`
    each `inc` is a memory-mapped write behind prometheus-client's lock and a `getpid` fork
    check; a batch of 8 tokens of one client is one write instead of 8. Nothing is held
    past the call, so what a scrape reads is what it read with one `inc` per event."""
    counts: dict[AuditCount, int] = {}
    for event_type, actor_id, details in events:
        counted = audit_counter(event_type, actor_id, details)
        if counted is not None:
            counts[counted] = counts.get(counted, 0) + 1
    for (name, labels), number in counts.items():
        metrics.inc(name, *labels, amount=float(number))


def count_sync_run(metrics: Metrics, source: str, status: str, counts: Mapping[str, Any]) -> None:
    """The counters of one finished directory sync run (its duration is observed apart)."""
    metrics.inc("idhub_sync_runs_total", source, status)
    for kind in ("create", "update", "move", "disable", "enable"):
        amount = counts.get(kind)
        if isinstance(amount, int) and amount > 0 and status == "succeeded":
            metrics.inc("idhub_sync_changes_total", source, kind, amount=float(amount))
