"""The counters derived from audit events, counted per committed batch (core/metrics.py
`count_audit_events`, bootstrap.py `start_metrics`, adapters/audit_store.py `_observe`):
the exposition equals one increment per event, a batch writes each (counter, labels) once,
nothing is counted before its COMMIT, and a failed append counts nothing."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from idhub.adapters.prometheus_metrics import PrometheusMetrics
from idhub.bootstrap import Services
from idhub.core.audit import Actor, EventType, PendingEvent
from idhub.core.metrics import count_audit_events
from idhub.errors import AuditError

CC = {"grant_type": "client_credentials", "client_id": "svc-a", "scope": "authz"}

# (event type, actor id, details) and the counter sample each must move by one, written out
# here rather than derived from the code under test.
CASES: list[tuple[tuple[str, str | None, dict[str, Any]], tuple[str, dict[str, str]] | None]] = [
    (
        ("token.issued", "svc-a", CC),
        ("idhub_tokens_issued_total", {"grant_type": "client_credentials", "client_id": "svc-a"}),
    ),
    (
        ("token.issued", "svc-b", {"grant_type": "client_credentials"}),
        ("idhub_tokens_issued_total", {"grant_type": "client_credentials", "client_id": "svc-b"}),
    ),
    (
        ("token.refreshed", "u1", {"grant_type": "refresh_token", "client_id": "web"}),
        ("idhub_tokens_issued_total", {"grant_type": "refresh_token", "client_id": "web"}),
    ),
    (
        ("token.exchanged", None, {}),
        ("idhub_tokens_issued_total", {"grant_type": "unknown", "client_id": "unknown"}),
    ),
    (
        ("login.failed", None, {"reason": "bad_password"}),
        ("idhub_signin_failures_total", {"reason": "bad_password"}),
    ),
    (("login.throttled", None, {}), ("idhub_signin_failures_total", {"reason": "unknown"})),
    (("mfa.failed", "u1", {}), ("idhub_signin_failures_total", {"reason": "second_factor"})),
    (
        ("mfa.failed", "u1", {"reason": "bad_code"}),
        ("idhub_signin_failures_total", {"reason": "bad_code"}),
    ),
    (
        ("token.refresh_reuse_detected", "u1", {"client_id": "web"}),
        ("idhub_refresh_reuse_detected_total", {"client_id": "web"}),
    ),
    (("policy.reloaded", None, {}), ("idhub_policy_reloads_total", {"result": "accepted"})),
    (("policy.rejected", None, {}), ("idhub_policy_reloads_total", {"result": "rejected"})),
    (("login.succeeded", "u1", {}), None),
    (("token.revoked", "svc-a", CC), None),
]
AUDIT_COUNTERS = {
    "idhub_tokens_issued_total",
    "idhub_signin_failures_total",
    "idhub_refresh_reuse_detected_total",
    "idhub_policy_reloads_total",
}


def _key(client: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The sample key of client-credentials tokens of `client` (labels sorted by name)."""
    return "idhub_tokens_issued_total", (
        ("client_id", client),
        ("grant_type", "client_credentials"),
    )


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The audit-derived counters' samples in the exposition (a scrape's view)."""
    found = {}
    for family in text_string_to_metric_families(metrics.exposition()[0].decode()):
        for sample in family.samples:
            if sample.name in AUDIT_COUNTERS:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def expected(cases: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for _, sample in cases:
        if sample is not None:
            key = (sample[0], tuple(sorted(sample[1].items())))
            counts[key] = counts.get(key, 0.0) + 1.0
    return counts


def test_a_batch_exports_what_one_increment_per_event_did() -> None:
    batched, each = PrometheusMetrics(), PrometheusMetrics()
    cases = CASES * 3
    count_audit_events(batched, [event for event, _ in cases])
    for _, sample in cases:  # the reference: one `inc` per event, labels in the spec's order
        if sample is not None:
            each.inc(sample[0], *sample[1].values())
    assert samples(batched) == samples(each) == expected(cases)
    assert samples(batched)[_key("svc-a")] == 3.0


def test_a_batch_writes_each_counter_and_label_set_once() -> None:
    metrics = PrometheusMetrics()
    writes: list[tuple[str, tuple[str, ...], float]] = []
    inc = metrics.inc

    def recorded(name: str, *labels: str, amount: float = 1.0) -> None:
        writes.append((name, labels, amount))
        inc(name, *labels, amount=amount)

    metrics.inc = recorded  # type: ignore[method-assign]
    token = ("token.issued", "svc-a", CC)
    count_audit_events(metrics, [token] * 8 + [("login.failed", None, {"reason": "locked"})])
    assert writes == [
        ("idhub_tokens_issued_total", ("client_credentials", "svc-a"), 8.0),
        ("idhub_signin_failures_total", ("locked",), 1.0),
    ]
    count_audit_events(metrics, [("login.succeeded", "u1", {})])  # nothing to count
    assert len(writes) == 2


# ------------------------------------------------------------------ through the audit log


def _token(n: int, client: str = "svc-a") -> PendingEvent:
    return PendingEvent(
        EventType.TOKEN_ISSUED,
        Actor("client", client),
        target=f"jti-{n}",
        details={"grant_type": "client_credentials", "client_id": client, "scope": "authz"},
    )


def _tokens(prom: PrometheusMetrics, client: str = "svc-a") -> float:
    return samples(prom).get(_key(client), 0.0)


def _started(services: Services) -> PrometheusMetrics:
    services.start_metrics()
    prom = services.prometheus
    assert prom is not None and services.metrics is prom
    return prom


def test_a_committed_batch_is_counted_once_its_events_are_in_the_database(
    services: Services,
) -> None:
    """Each counter write happens after the COMMIT: a connection of its own already reads the
    batch's events then. 8 tokens of one client and 2 of another: two writes."""
    prom = _started(services)
    writes: list[tuple[str, tuple[str, ...], float, int]] = []
    inc = prom.inc

    def recorded(name: str, *labels: str, amount: float = 1.0) -> None:
        writes.append((name, labels, amount, services.audit_log.count()))
        inc(name, *labels, amount=amount)

    prom.inc = recorded  # type: ignore[method-assign]
    before = services.audit_log.count()
    services.audit_log.record_many([_token(n) for n in range(8)] + [_token(8, "svc-b")] * 2)
    assert writes == [
        ("idhub_tokens_issued_total", ("client_credentials", "svc-a"), 8.0, before + 10),
        ("idhub_tokens_issued_total", ("client_credentials", "svc-b"), 2.0, before + 10),
    ]
    assert (_tokens(prom), _tokens(prom, "svc-b")) == (8.0, 2.0)
    services.audit_log.record(
        EventType.LOGIN_FAILED, actor=Actor("user", "u1"), details={"reason": "bad_password"}
    )
    assert samples(prom)[("idhub_signin_failures_total", (("reason", "bad_password"),))] == 1.0


def test_concurrent_appends_in_one_group_commit_count_every_event(services: Services) -> None:
    prom = _started(services)
    barrier = threading.Barrier(6)

    def append(i: int) -> None:
        barrier.wait(10)
        for n in range(5):
            services.audit_log.record_many([_token(i * 100 + n * 10 + k) for k in range(3)])

    threads = [threading.Thread(target=append, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert _tokens(prom) == 6 * 5 * 3.0
    assert services.audit_log.verify().ok


def test_a_unit_of_work_counts_its_events_only_after_its_commit(services: Services) -> None:
    prom = _started(services)
    with services.unit_of_work.atomic():
        services.audit_log.record_many([_token(n) for n in range(3)])
        assert _tokens(prom) == 0.0  # placed in the transaction, not committed
    assert _tokens(prom) == 3.0
    with pytest.raises(RuntimeError), services.unit_of_work.atomic():
        services.audit_log.record_many([_token(n) for n in range(3, 6)])
        raise RuntimeError("the unit's own work failed: it rolls back")
    assert _tokens(prom) == 3.0


@contextlib.contextmanager
def _audit_inserts_refused(engine: Engine) -> Iterator[None]:
    """The database itself refuses every audit row until the block ends."""
    if engine.dialect.name == "sqlite":
        create = [
            "CREATE TRIGGER tc_refuse BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ]
        drop = ["DROP TRIGGER tc_refuse"]
    else:
        create = [
            "CREATE OR REPLACE FUNCTION tc_refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER tc_refuse BEFORE INSERT ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION tc_refuse()",
        ]
        drop = ["DROP TRIGGER tc_refuse ON audit_events", "DROP FUNCTION tc_refuse()"]
    with engine.begin() as conn:
        for statement in create:
            conn.execute(text(statement))
    try:
        yield
    finally:
        with engine.begin() as conn:
            for statement in drop:
                conn.execute(text(statement))


def test_a_failed_append_counts_nothing(services: Services) -> None:
    prom = _started(services)
    services.audit_log.record_many([_token(0)])
    before = services.audit_log.count()
    with _audit_inserts_refused(services.engine):
        with pytest.raises(AuditError):
            services.audit_log.record_many([_token(n) for n in range(1, 9)])
        with pytest.raises(AuditError):
            services.audit_log.record(
                EventType.LOGIN_FAILED, actor=Actor("user", "u1"), details={"reason": "locked"}
            )
    assert services.audit_log.count() == before
    assert samples(prom) == {_key("svc-a"): 1.0}
    services.audit_log.record_many([_token(n) for n in range(9, 12)])  # writes again, counts
    assert _tokens(prom) == 4.0
