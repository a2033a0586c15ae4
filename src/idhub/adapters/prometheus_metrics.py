"""The `Metrics` port (core/metrics.py) on `prometheus-client`, and the `/metrics` text.

One process: every metric lives in this object's own registry (tests build many `Services`
in one interpreter; a shared global registry would refuse the second). Several worker
processes (`idhub serve --workers N`): the CLI points `PROMETHEUS_MULTIPROC_DIR` at an
empty directory before the workers start, prometheus-client then keeps every value in
memory-mapped files there, and whichever worker answers a scrape sums them all.

Values read at scrape time (active sessions, sink lag, policy state, clock offset) are
`ScrapeGauge`s computed by the worker answering the scrape: they describe the shared
database or the replica as a whole, not one process.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, event

from idhub.core.metrics import CATALOGUE, SPECS, MetricSpec, ScrapeGauge, Tally

log = logging.getLogger(__name__)


class PrometheusMetrics:
    def __init__(self, *, multiprocess_dir: Path | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        self._registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, Any] = {spec.name: self._declare(spec) for spec in CATALOGUE}
        # (name, labels) -> the labelled child: `labels()` takes a lock and builds a key each
        # call; a plain dict read does not, and keeps a counted request under a microsecond.
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._scrape = _ScrapeCollector()
        self._registry.register(self._scrape)
        self._tallies: list[_HeldTally] = []

    def _declare(self, spec: MetricSpec) -> Any:
        # The `_total` suffix is added back by prometheus-client for counters.
        if spec.kind == "counter":
            name = spec.name.removesuffix("_total")
            return Counter(name, spec.help, spec.labels, registry=self._registry)
        if spec.kind == "histogram":
            return Histogram(
                spec.name, spec.help, spec.labels, registry=self._registry, buckets=spec.buckets
            )
        return Gauge(
            spec.name,
            spec.help,
            spec.labels,
            registry=self._registry,
            multiprocess_mode="livesum",
        )

    def _child(self, name: str, labels: tuple[str, ...]) -> Any:
        key = (name, labels)
        child = self._children.get(key)
        if child is None:
            metric = self._metrics[name]
            child = metric.labels(*labels) if labels else metric
            self._children[key] = child
        return child

    # ------------------------------------------------------------------ the port

    def tally(self, counter: str, histogram: str) -> Tally:
        spec = SPECS[histogram]
        if SPECS[counter].labels != spec.labels:
            raise ValueError(f"{counter} and {histogram} have different labels")
        tally = _HeldTally(self, counter, histogram, spec.buckets)
        # The flush adds to the histogram's own bucket values: they must be these buckets.
        if list(getattr(self._metrics[histogram], "_upper_bounds", ())) != list(tally.bounds):
            raise RuntimeError(f"{histogram}: prometheus-client's buckets are not the catalogue's")
        self._tallies.append(tally)
        return tally

    def inc(self, name: str, *labels: str, amount: float = 1.0) -> None:
        self._child(name, labels).inc(amount)

    def observe(self, name: str, value: float, *labels: str) -> None:
        self._child(name, labels).observe(value)

    def add_scrape_gauge(self, gauge: ScrapeGauge) -> None:
        self._scrape.gauges.append(gauge)

    def dec(self, name: str, *labels: str) -> None:
        self._child(name, labels).dec()

    # ------------------------------------------------------------------ reading

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        for tally in self._tallies:  # this process's figures up to this moment
            tally.flush()
        if self._multiprocess_dir is None:
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._multiprocess_dir))  # type: ignore[no-untyped-call]
        registry.register(self._scrape)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def watch_pool(self, engine: Engine) -> None:
        """Counts the connections this process holds out of the engine's pool."""
        gauge = self._child("idhub_db_connections_in_use", ())

        @event.listens_for(engine, "checkout")
        def _checkout(*_args: Any) -> None:
            gauge.inc()

        @event.listens_for(engine, "checkin")
        def _checkin(*_args: Any) -> None:
            gauge.dec()


class _HeldTally:
    """A request counter and its duration histogram, added to in the process and written to
    the metric values in one go by `flush`.

    Under `idhub serve --workers N` every value is a memory-mapped file entry, and each of
    prometheus-client's increments takes its lock, asks the kernel for the pid (a fork check)
    and packs the file entry: three of them per request were ~8 µs of a ~80 µs introspection
    on the event loop. Held here, a request costs one dict read and a few additions, and what
    the requests of one event-loop turn added is written as one increment per value (the
    request layer flushes at the end of the turn, web/observe.py), so a scrape by any worker
    sees every request answered before that turn; the scraping worker's own held figures are
    flushed before it reads (`exposition`). Counts and buckets are exact; the sum is added as
    one float per flush (rounding may differ from one addition per request in the last
    digits)."""

    def __init__(
        self,
        metrics: PrometheusMetrics,
        counter: str,
        histogram: str,
        buckets: tuple[float, ...],
    ) -> None:
        self._metrics = metrics
        self._counter = counter
        self._histogram = histogram
        # As prometheus-client's `Histogram` bounds them: the catalogue's, then +Inf.
        bounds = [float(b) for b in buckets]
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._width = len(self.bounds)
        # labels -> [count, sum, one count per bucket]
        self._held: dict[tuple[str, ...], list[float]] = {}
        self._lock = threading.Lock()  # the scrape flushes from another thread

    def add(self, labels: tuple[str, ...], value: float) -> None:
        bounds = self.bounds
        at = bisect_left(bounds, value)
        with self._lock:
            held = self._held.get(labels)
            if held is None:
                held = self._held[labels] = [0.0] * (self._width + 2)
            held[0] += 1.0
            held[1] += value
            # Only a NaN is in no bucket (prometheus-client: the first `value <= bound`).
            if at < self._width and value <= bounds[at]:
                held[at + 2] += 1.0

    def flush(self) -> None:
        with self._lock:
            if not self._held:
                return
            held, self._held = self._held, {}
        metrics = self._metrics
        for labels, (count, total, *buckets) in held.items():
            metrics._child(self._counter, labels).inc(count)
            _add_observations(metrics._child(self._histogram, labels), total, buckets)


def _add_observations(histogram: Any, total: float, buckets: list[float]) -> None:
    """Adds `sum(buckets)` observations summing to `total` to a labelled `Histogram`: its sum
    and each bucket's count once, as its `observe` does per value (the same value objects,
    so the same files and the same exposition)."""
    histogram._sum.inc(total)
    values = histogram._buckets
    for index, count in enumerate(buckets):
        if count:
            values[index].inc(count)


class _ScrapeCollector(Collector):
    """Reads each `ScrapeGauge` when scraped; a reader that fails is left out (and logged
    once per scrape), so a database outage never turns `/metrics` into an error."""

    def __init__(self) -> None:
        self.gauges: list[ScrapeGauge] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for gauge in self.gauges:
            started = time.perf_counter()
            try:
                value = gauge.read()
            except Exception as exc:  # any reader's failure: omit that gauge, keep the rest
                log.warning("metric %s not read: %s", gauge.name, type(exc).__name__)
                continue
            if value is None:
                continue
            family = GaugeMetricFamily(
                gauge.name, gauge.help, labels=[gauge.label] if gauge.label else None
            )
            if isinstance(value, Mapping):
                for label, number in sorted(value.items()):
                    family.add_metric([label], float(number))
            else:
                family.add_metric([], float(value))
            if time.perf_counter() - started > 1.0:
                log.warning("metric %s took over a second to read", gauge.name)
            yield family
