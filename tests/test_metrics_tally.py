"""The request metrics held in the process (adapters/prometheus_metrics.py `_HeldTally`, fed
by web/observe.py): what a scrape exports is what one increment per request exported."""

from __future__ import annotations

import asyncio

from idhub.adapters.prometheus_metrics import PrometheusMetrics
from idhub.web.observe import RequestObserver

COUNTER, HISTOGRAM = "idhub_http_requests_total", "idhub_http_request_duration_seconds"
# Binary fractions (exact sums), both bucket edges, past the last bound, and a NaN (no bucket).
VALUES = [0.0009765625, 0.001, 0.0025, 0.5, 0.5, 3.0, 10.0, 20.0, 0.0, float("nan")]
LABELS = [("/token", "POST", "200"), ("/token", "POST", "401"), ("/introspect", "POST", "200")]


def _lines(metrics: PrometheusMetrics) -> list[str]:
    text = metrics.exposition()[0].decode()
    return [line for line in text.splitlines() if "_created" not in line and "http_" in line]


def test_a_flushed_tally_exports_what_one_increment_per_request_did() -> None:
    held, each = PrometheusMetrics(), PrometheusMetrics()
    tally = held.tally(COUNTER, HISTOGRAM)
    for i, value in enumerate(VALUES * 3):
        labels = LABELS[i % len(LABELS)]
        tally.add(labels, value)
        each.inc(COUNTER, *labels)
        each.observe(HISTOGRAM, value, *labels)
    tally.flush()
    assert _lines(held) == _lines(each)
    assert any("+Inf" in line for line in _lines(held))


def test_the_exposition_includes_what_is_still_held() -> None:
    metrics = PrometheusMetrics()
    metrics.tally(COUNTER, HISTOGRAM).add(("/healthz", "GET", "200"), 0.002)
    assert 'idhub_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in (
        _lines(metrics)
    )


def test_the_observer_writes_at_the_end_of_the_event_loops_turn() -> None:
    """Requests answered in one turn reach the values together, before the next turn runs."""
    metrics = PrometheusMetrics()
    observer = RequestObserver(metrics=metrics, templates={})
    counter = metrics._child(COUNTER, ("unmatched", "GET", "200"))

    async def turns() -> list[float]:
        seen = []
        for _ in range(3):
            observer.report({"method": "GET"}, 200, 0.001)
        seen.append(counter._value.get())  # held in this turn
        await asyncio.sleep(0)
        seen.append(counter._value.get())
        observer.report({"method": "GET"}, 200, 0.001)
        await asyncio.sleep(0)
        seen.append(counter._value.get())
        return seen

    assert asyncio.run(turns()) == [0.0, 3.0, 4.0]
    observer.report({"method": "GET"}, 200, 0.001)  # no loop: written at once
    assert counter._value.get() == 5.0
