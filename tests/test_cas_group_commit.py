"""CAS validations that arrive together share one transaction (adapters/group_commit.py, the
ticket store's `consume_many`, `CasServer.validate_many`, web/batching.py), on SQLite and
PostgreSQL, without any check loosened: each ticket is still spent exactly once, bound to its
service, decided on the session and person as they are at that moment, and its audit event is
committed with it; one bad request in a batch costs only itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest

from idhub.bootstrap import Services
from idhub.cas.responses import Failure, Validated
from idhub.cas.server import ValidationRequest
from idhub.config import Settings
from idhub.core.audit import Actor, EventType, PendingEvent, RequestContext
from idhub.core.cas import Redeemed
from idhub.core.clock import FrozenClock
from idhub.core.crypto import sha256_hex
from idhub.web.batching import Batcher
from tests.conftest import LiveServer
from tests.test_cas_tickets import SERVICE, _issue, _setup


def _kinds(services: Services) -> list[str]:
    return [e.event_type for e in services.audit_log.search(limit=500)]


def test_the_same_ticket_twice_in_one_batch_is_validated_once(services: Services) -> None:
    user, session = _setup(services)
    ticket = _issue(services, user, session)
    other = _issue(services, user, session)
    first, again, elsewhere = services.cas.validate_many(
        [
            (ValidationRequest(ticket, SERVICE, attributes=True), None),
            (ValidationRequest(ticket, SERVICE, attributes=True), None),
            (ValidationRequest(other, "https://oa.example.com/other/"), None),
        ]
    )
    assert isinstance(first, Validated) and first.user == "alice"
    assert isinstance(again, Failure) and again.code == "INVALID_TICKET"
    assert isinstance(elsewhere, Failure) and elsewhere.code == "INVALID_SERVICE"
    kinds = _kinds(services)
    assert kinds.count("cas.ticket_validated") == 1
    assert kinds.count("cas.ticket_rejected") == 2
    assert services.audit_log.verify().ok


def test_many_threads_racing_for_one_ticket_get_it_once(services: Services) -> None:
    user, session = _setup(services)
    tickets = [_issue(services, user, session) for _ in range(10)]
    answers: list[Validated | Failure] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def validate(ticket: str) -> None:
        start.wait()
        answer = services.cas.validate(ValidationRequest(ticket, SERVICE))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=validate, args=(t,)) for t in tickets for _ in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(isinstance(a, Validated) for a in answers) == 10
    assert sum(isinstance(a, Failure) and a.code == "INVALID_TICKET" for a in answers) == 10
    kinds = _kinds(services)
    assert kinds.count("cas.ticket_validated") == 10
    assert kinds.count("cas.ticket_rejected") == 10
    assert services.audit_log.verify().ok


def test_a_failing_item_costs_only_itself(services: Services) -> None:
    """The batch rolls back as a whole and is retried one by one: the bad item raises (its
    ticket is not spent, nothing of it recorded), its neighbours commit with their events."""
    user, session = _setup(services)
    tickets = [_issue(services, user, session) for _ in range(3)]
    store = services.cas_tickets._store

    def recorded(found: Redeemed | None) -> Sequence[PendingEvent]:
        assert found is not None
        return [PendingEvent(EventType.CAS_TICKET_VALIDATED, Actor("user", user.sub), "oa")]

    def broken(found: Redeemed | None) -> Sequence[PendingEvent]:
        raise RuntimeError("this one is bad")

    before = _kinds(services).count("cas.ticket_validated")
    now = time.time()
    outcomes = store.consume_many(
        [
            (sha256_hex(tickets[0]), now, recorded),
            (sha256_hex(tickets[1]), now, broken),
            (sha256_hex(tickets[2]), now, recorded),
        ]
    )
    assert isinstance(outcomes[0], Redeemed) and isinstance(outcomes[2], Redeemed)
    assert isinstance(outcomes[1], RuntimeError)
    assert _kinds(services).count("cas.ticket_validated") == before + 2
    # The bad one's ticket was not spent: it still validates.
    assert isinstance(services.cas.validate(ValidationRequest(tickets[1], SERVICE)), Validated)
    assert services.audit_log.verify().ok


# ------------------------------------------------------------------ refusals and the budget

ALICE = RequestContext(client_ip="203.0.113.7")
BOB = RequestContext(client_ip="198.51.100.9")
MADE_UP = "ST-" + "A" * 27


def _budgeted(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    limit: int,
) -> tuple[Services, FrozenClock]:
    clock = FrozenClock(time.time())
    toml = f"\n[defences]\nanonymous_writes = {limit}\nanonymous_window = 60\n"
    return make_services(make_settings(db_url, toml=toml), clock=clock), clock


class _Rollbacks:
    """Makes the audit append inside the ticket store's group transaction fail while `armed`
    (as a deadline or a lost connection would): the transaction rolls back after every
    refusal in it was decided, and the group commit retries the batch one by one."""

    def __init__(self, services: Services) -> None:
        audit = services.cas_tickets._store._audit
        assert audit is not None
        append = audit.record_in
        self.armed: Callable[[int], bool] = lambda size: False
        self.failed: list[int] = []

        def flaky(conn: Any, events: Sequence[PendingEvent]) -> Any:
            if self.armed(len(events)):
                self.failed.append(len(events))
                raise RuntimeError("the transaction rolled back")
            return append(conn, events)

        audit.record_in = flaky


def test_a_retried_batch_spends_a_refusals_budget_once(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> None:
    """The batch fails once and is retried one by one, so the refused item is decided twice:
    the address's budget is spent once for it, not twice."""
    services, _ = _budgeted(make_settings, make_services, db_url, limit=2)
    user, session = _setup(services)
    good = _issue(services, user, session)
    rollbacks = _Rollbacks(services)
    rollbacks.armed = lambda size: size > 1 and not rollbacks.failed
    refused, validated = services.cas.validate_many(
        [(ValidationRequest(MADE_UP, SERVICE), ALICE), (ValidationRequest(good, SERVICE), None)]
    )
    assert rollbacks.failed == [2]
    assert isinstance(refused, Failure) and refused.code == "INVALID_TICKET"
    assert isinstance(validated, Validated)
    # Alice's second refusal is within her budget of two, so it is written too.
    again = services.cas.validate_many([(ValidationRequest(MADE_UP, SERVICE), ALICE)])
    assert isinstance(again[0], Failure)
    assert _kinds(services).count("cas.ticket_rejected") == 2
    assert services.audit_log.verify().ok


def test_a_refusal_that_rolled_back_gives_its_summary_back(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> None:
    """The summary of a closed window rides with the next refusal's write; when that write's
    transaction does not commit, the summary waits for the next one instead of being lost."""
    services, clock = _budgeted(make_settings, make_services, db_url, limit=1)
    user, session = _setup(services)
    for _ in range(2):  # the second is over Alice's budget: suppressed
        services.cas.validate_many([(ValidationRequest(MADE_UP, SERVICE), ALICE)])
    clock.advance(61)
    rollbacks = _Rollbacks(services)
    rollbacks.armed = lambda size: True
    good = _issue(services, user, session)
    outcomes = services.cas.validate_many(
        [(ValidationRequest(MADE_UP, SERVICE), ALICE), (ValidationRequest(good, SERVICE), None)]
    )
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert _kinds(services).count("audit.suppressed") == 0
    rollbacks.armed = lambda size: False
    services.cas.validate_many([(ValidationRequest(MADE_UP, SERVICE), BOB)])
    summaries = [
        e for e in services.audit_log.search(limit=50) if e.event_type == "audit.suppressed"
    ]
    assert len(summaries) == 1
    assert summaries[0].details["suppressed"] == {"cas.ticket_rejected": 1}
    assert services.audit_log.verify().ok


def test_groups_are_read_as_they_are_at_each_validation(services: Services) -> None:
    """No attribute cache outlives a batch: a group change shows in the next validation."""
    user, session = _setup(services)
    services.cas_services.remove("oa")
    services.cas_services.register(
        "oa", urls=[SERVICE], domain="oa", first_party=True, attributes=["groups"]
    )
    finance = services.identity.ensure_group("finance")
    services.identity.set_group_members(finance.id, [user.id])
    first = services.cas.validate(
        ValidationRequest(_issue(services, user, session), SERVICE, attributes=True)
    )
    assert isinstance(first, Validated) and first.attributes["groups"] == ["finance"]
    audit = services.identity.ensure_group("audit")
    services.identity.set_group_members(audit.id, [user.id])
    services.identity.set_group_members(finance.id, [])
    second = services.cas.validate(
        ValidationRequest(_issue(services, user, session), SERVICE, attributes=True)
    )
    assert isinstance(second, Validated) and second.attributes["groups"] == ["audit"]


def test_the_batcher_answers_each_request_with_its_own_outcome() -> None:
    batches: list[list[int]] = []

    def run(batch: Sequence[int]) -> list[int | Exception]:
        batches.append(list(batch))
        time.sleep(0.05)  # requests arriving meanwhile make the next batch
        return [ValueError(str(n)) if n % 3 == 0 else n * 10 for n in batch]

    batcher: Batcher[int, int] = Batcher(run)

    async def one(n: int) -> int | str:
        try:
            return await batcher.submit(n)
        except ValueError as exc:
            return f"error {exc}"

    async def main() -> list[int | str]:
        first = asyncio.ensure_future(one(1))
        await asyncio.sleep(0.01)  # its batch runs; the next ones queue meanwhile
        rest = await asyncio.gather(*(one(n) for n in range(2, 8)))
        return [await first, *rest]

    assert asyncio.run(main()) == [10, 20, "error 3", 40, 50, "error 6", 70]
    assert batches == [[1], [2, 3, 4, 5, 6, 7]]


@pytest.fixture
def cas_server(live_server: LiveServer) -> LiveServer:
    return live_server


def test_concurrent_http_validations_each_get_their_answer(cas_server: LiveServer) -> None:
    services = cas_server.services
    user, session = _setup(services)
    tickets = [_issue(services, user, session) for _ in range(24)]

    async def main() -> list[str]:
        async with httpx.AsyncClient(base_url=cas_server.url, timeout=30) as client:

            async def validate(ticket: str) -> str:
                answer = await client.get(
                    "/cas/p3/serviceValidate", params={"ticket": ticket, "service": SERVICE}
                )
                assert answer.status_code == 200
                return answer.text

            # Each ticket twice, all at once: one success and one refusal per ticket.
            return await asyncio.gather(*(validate(t) for t in tickets + tickets))

    bodies = asyncio.run(main())
    assert sum("<cas:user>alice</cas:user>" in b for b in bodies) == 24
    assert sum('code="INVALID_TICKET"' in b for b in bodies) == 24
    assert services.audit_log.verify().ok


def test_the_batcher_runs_up_to_its_concurrency_of_batches_at_once() -> None:
    running: list[int] = []
    peak: list[int] = []

    def run(batch: Sequence[int]) -> list[int | Exception]:
        running.append(1)
        peak.append(len(running))
        time.sleep(0.05)
        running.pop()
        return [n for n in batch]

    batcher: Batcher[int, int] = Batcher(run, concurrency=2)

    async def main() -> list[int]:
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # its batch runs; a second one takes what comes next
        rest = await asyncio.gather(*(batcher.submit(n) for n in range(1, 10)))
        return [await first, *rest]

    assert asyncio.run(main()) == list(range(10))
    assert max(peak) == 2
