"""A batch of token requests shares its client-authentication throttle read
(core/client_guard.py `ThrottleBatch`) without loosening the throttle: one read per client and
address while nothing in the batch changes a counter, a fresh read after any failure or
cleared counter, and another replica's failures seen by the next batch. On SQLite and
PostgreSQL, with a frozen clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from idhub.adapters.throttle_store import SqlThrottleStore
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.audit import RequestContext
from idhub.core.client_guard import ClientAuthGuard, ThrottleBatch
from idhub.core.clock import FrozenClock
from idhub.core.throttle import Counter, Throttle, ThrottleKey
from idhub.oidc.messages import OAuthRequestData
from tests.oidc_support import basic_header, prepare, raw_form_request

NOW = 1_800_000_000.0
OFFICE = RequestContext(client_ip="198.51.100.10", user_agent="t", request_id="r1")
CC = [("grant_type", "client_credentials"), ("scope", "authz")]


class CountedReads(SqlThrottleStore):
    """The real store, counting its counter reads (the database query under test)."""

    def __init__(self, services: Services) -> None:
        super().__init__(services.engine)
        self.reads = 0

    def counters(self, keys: Sequence[ThrottleKey]) -> list[Counter]:
        self.reads += 1
        return super().counters(keys)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def hub(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> Services:
    return make_services(make_settings(db_url), clock=clock)


def _guard(services: Services, clock: FrozenClock) -> tuple[ClientAuthGuard, CountedReads]:
    store = CountedReads(services)
    throttle = Throttle(store, policy=services.throttle.policy, clock=clock)
    return ClientAuthGuard(throttle, services.audit), store


def test_a_batch_reads_the_counters_once_until_one_changes(
    hub: Services, clock: FrozenClock
) -> None:
    guard, store = _guard(hub, clock)
    batch = ThrottleBatch()
    for _ in range(5):
        attempt = guard.begin_claimed("svc", OFFICE, batch=batch)
        assert not attempt.refused
        attempt.succeeded()
    assert store.reads == 1
    # A failure changes the counters: the next attempt reads again, and sees it.
    guard.begin_claimed("svc", OFFICE, batch=batch).failed()
    after = guard.begin_claimed("svc", OFFICE, batch=batch)
    assert store.reads == 2
    assert {c.kind for c in after.reading.counters} == {"client", "client_ip"}
    # That success clears the client's counter: read again once more, then shared again.
    after.succeeded()
    for _ in range(3):
        guard.begin_claimed("svc", OFFICE, batch=batch).succeeded()
    assert store.reads == 3
    # Another client at the same address has keys of its own.
    guard.begin_claimed("other", OFFICE, batch=batch).succeeded()
    assert store.reads == 4
    # Without a batch every attempt reads, as before.
    for _ in range(3):
        guard.begin_claimed("svc", OFFICE).succeeded()
    assert store.reads == 7


def test_attempts_sharing_a_read_are_each_judged_at_their_own_moment(
    hub: Services, clock: FrozenClock
) -> None:
    guard, store = _guard(hub, clock)
    free = hub.throttle.policy.client.free
    for _ in range(free + 1):  # one failure beyond the free ones: the next attempt waits
        guard.begin_claimed("svc", OFFICE).failed()
    batch = ThrottleBatch()
    waiting = guard.begin_claimed("svc", OFFICE, batch=batch)
    assert waiting.refused and waiting.retry_after > 0
    clock.advance(waiting.retry_after + 0.5)
    # The delay ran out between two attempts of the batch: let through on the shared read.
    reads = store.reads
    assert not guard.begin_claimed("svc", OFFICE, batch=batch).refused
    assert store.reads == reads


def _request(secret: str, ip: str = OFFICE.client_ip or "") -> OAuthRequestData:
    return raw_form_request(
        "/token", CC, ip, headers={"authorization": basic_header("svc", secret)}
    )


def _client(services: Services) -> str:
    prepare(services)
    _, secret = services.clients.register("svc", grant_types=["client_credentials"], scope="authz")
    assert secret
    return secret


def test_a_guess_in_a_batch_is_judged_on_the_failures_before_it(hub: Services) -> None:
    """Wrong secrets and then the right one in one batch: once the failures earn a delay,
    the right secret is refused in that batch too, as it is sent one request at a time."""
    secret = _client(hub)
    free = hub.throttle.policy.client.free
    batch = [_request("wrong")] * (free + 1) + [_request(secret)]
    answers = hub.oidc.token_many(batch)
    assert [a.status for a in answers] == [401] * (free + 2)
    last = answers[-1].body
    assert isinstance(last, dict) and last["error_description"] == "too many failed attempts"


def test_the_next_batch_sees_another_replicas_failures(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> None:
    settings = make_settings(db_url)
    one, two = make_services(settings, clock=clock), make_services(settings, clock=clock)
    secret = _client(one)
    assert [a.status for a in one.oidc.token_many([_request(secret)] * 4)] == [200] * 4
    # The other replica (or worker) sees guesses: past the free failures, the client must
    # wait at this address.
    for _ in range(two.throttle.policy.client.free + 1):
        assert two.oidc.token(_request("wrong")).status == 401
    answers = one.oidc.token_many([_request(secret)] * 4)
    assert [a.status for a in answers] == [401] * 4
    assert all(
        isinstance(a.body, dict) and a.body["error_description"] == "too many failed attempts"
        for a in answers
    )
    # Another address is not locked out by it.
    assert one.oidc.token(_request(secret, "198.51.100.77")).status == 200
