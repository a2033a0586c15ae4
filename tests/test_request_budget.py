"""The budget of writes a request without a session may cause per source address
(core/request_budget.py): `GET /login/upstream/{name}` (a state row and an audit event each)
and `POST /login/passkey/options` (a challenge row each) over real HTTP on SQLite and
PostgreSQL, addresses set by a trusted proxy's `X-Forwarded-For`, the clock injected; the
N+1st request from one address is a 429 with `Retry-After` and writes nothing, another address
is unaffected, the window passing lets it through again, memory stays bounded."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from idhub.adapters.db import mfa_challenges, upstream_states
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.clock import FrozenClock
from idhub.core.request_budget import (
    PASSKEY_OPTIONS,
    UPSTREAM_START,
    BudgetRule,
    RequestBudget,
)
from idhub.errors import ConfigError
from tests.conftest import free_port, serve
from tests.dingtalk_fake import DingTalkFake
from tests.sso_support import csrf_token, events
from tests.upstream_support import DINGTALK, ENV, running_dingtalk, running_wecom, sources_toml
from tests.wecom_fake import WeComFake

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")

LIMIT = 3
WINDOW = 60
ALICE = "203.0.113.7"
BOB = "198.51.100.9"
BUDGET_TOML = (
    '\n[server]\ntrusted_proxies = ["127.0.0.1/32"]\n\n'
    f"[defences]\nanonymous_writes = {LIMIT}\nanonymous_window = {WINDOW}\n"
)


# ------------------------------------------------------------------ the rule itself


def test_budget_counts_per_source_and_kind_and_refuses_beyond_the_limit() -> None:
    clock = FrozenClock(1_000.0)
    budget = RequestBudget(BudgetRule(limit=2, window=60, max_sources=100), clock=clock)
    assert budget.spend(UPSTREAM_START, ALICE) is None
    assert budget.spend(UPSTREAM_START, ALICE) is None
    refused = budget.spend(UPSTREAM_START, ALICE)
    assert refused is not None and refused.kind == UPSTREAM_START and refused.retry_after == 60
    # Another kind and another address have their own counters.
    assert budget.spend(PASSKEY_OPTIONS, ALICE) is None
    assert budget.spend(UPSTREAM_START, BOB) is None
    clock.advance(45.2)
    late = budget.spend(UPSTREAM_START, ALICE)
    assert late is not None and late.retry_after == 15
    clock.advance(14.8)
    assert budget.spend(UPSTREAM_START, ALICE) is None
    assert budget.refused() == 2


def test_ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() -> None:
    budget = RequestBudget(BudgetRule(limit=1, window=60, max_sources=100), clock=FrozenClock())
    assert budget.spend(UPSTREAM_START, "2001:db8:1:2::1") is None
    assert budget.spend(UPSTREAM_START, "2001:db8:1:2:ffff::9") is not None
    assert budget.spend(UPSTREAM_START, "2001:db8:1:3::1") is None
    assert budget.spend(UPSTREAM_START, "192.0.2.1") is None
    assert budget.spend(UPSTREAM_START, "::ffff:192.0.2.1") is not None
    # No usable address: one shared counter, never a free pass.
    assert budget.spend(UPSTREAM_START, None) is None
    assert budget.spend(UPSTREAM_START, "garbage") is not None


def test_memory_stays_bounded_with_many_addresses() -> None:
    budget = RequestBudget(BudgetRule(limit=1, window=60, max_sources=500), clock=FrozenClock())
    for n in range(20_000):
        budget.spend(UPSTREAM_START, f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert budget.size() == 500
    # The most recent addresses are the ones remembered.
    assert budget.spend(UPSTREAM_START, "10.0.78.31") is not None  # n = 19999


def test_concurrent_spending_never_exceeds_the_limit() -> None:
    budget = RequestBudget(BudgetRule(limit=50, window=60, max_sources=100), clock=FrozenClock())
    allowed: list[int] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        mine = sum(budget.spend(PASSKEY_OPTIONS, ALICE) is None for _ in range(100))
        allowed.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50


def test_budget_settings_are_checked_with_file_and_line(
    make_settings: Callable[..., Settings], sqlite_db_url: str
) -> None:
    settings = make_settings(sqlite_db_url)
    assert (settings.defences.anonymous_writes, settings.defences.anonymous_window) == (30, 60)
    with pytest.raises(ConfigError) as caught:
        make_settings(sqlite_db_url, toml="[defences]\n\nanonymous_writes = 0\n")
    assert "anonymous_writes must be at least 1" in str(caught.value)
    assert "idhub.toml:3" in str(caught.value)
    with pytest.raises(ConfigError, match="anonymous_sources"):
        make_settings(sqlite_db_url, toml="[defences]\nanonymous_sources = 5\n")


# ------------------------------------------------------------------ over HTTP


@dataclass
class Served:
    url: str
    services: Services
    clock: FrozenClock


@pytest.fixture
def dingtalk() -> Iterator[DingTalkFake]:
    yield from running_dingtalk()


@pytest.fixture
def wecom() -> Iterator[WeComFake]:
    yield from running_wecom()


@pytest.fixture
def served(
    make_settings: Callable[..., Settings],
    make_services: Callable[..., Services],
    db_url: str,
    dingtalk: DingTalkFake,
    wecom: WeComFake,
) -> Iterator[Served]:
    """A real idhub whose clock the test moves, behind a trusted proxy at 127.0.0.1."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    toml = sources_toml(dingtalk, wecom) + BUDGET_TOML
    settings = make_settings(db_url, issuer=issuer, toml=toml, env=ENV)
    clock = FrozenClock(time.time())
    services = make_services(settings, clock=clock)
    services.migrate()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(services, port))
        yield Served(url, services, clock)


def _rows(services: Services, table: Any) -> int:
    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _start(client: httpx.Client, address: str) -> httpx.Response:
    return client.get(
        f"/login/upstream/{DINGTALK}",
        headers={"X-Forwarded-For": address, "Accept": "text/html"},
    )


def test_upstream_starts_beyond_the_budget_are_refused_before_anything_is_written(
    served: Served,
) -> None:
    services = served.services
    with httpx.Client(base_url=served.url, timeout=10) as client:
        for _ in range(LIMIT):
            assert _start(client, ALICE).status_code == 303
        assert _rows(services, upstream_states) == LIMIT
        refused = _start(client, ALICE)
        assert refused.status_code == 429, refused.text[:300]
        assert refused.headers["retry-after"] == str(WINDOW)
        assert "text/html" in refused.headers["content-type"]
        assert "too_many_requests" in refused.text
        chinese = client.get(
            f"/login/upstream/{DINGTALK}",
            headers={"X-Forwarded-For": ALICE, "Accept": "text/html", "Accept-Language": "zh"},
        )
        assert chinese.status_code == 429 and "请求过多" in chinese.text
        assert _rows(services, upstream_states) == LIMIT
        assert len(events(services, "login.upstream_started")) == LIMIT
        # Another address has its own budget.
        assert _start(client, BOB).status_code == 303
        # The window passing lets the first address through again.
        served.clock.advance(WINDOW - 1)
        assert _start(client, ALICE).headers["retry-after"] == "1"
        served.clock.advance(1)
        assert _start(client, ALICE).status_code == 303
    assert _rows(services, upstream_states) == LIMIT + 2
    assert len(events(services, "login.upstream_started")) == LIMIT + 2


def _options(client: httpx.Client, token: str, address: str) -> httpx.Response:
    return client.post(
        "/login/passkey/options",
        data={"csrf_token": token},
        headers={"X-Forwarded-For": address, "Accept": "application/json"},
    )


def test_passkey_options_beyond_the_budget_are_refused_without_a_challenge_row(
    served: Served,
) -> None:
    services = served.services
    with httpx.Client(base_url=served.url, timeout=10) as client:
        token = csrf_token(client.get("/login").text)
        for _ in range(LIMIT):
            answer = _options(client, token, ALICE)
            assert answer.status_code == 200 and "handle" in answer.json(), answer.text[:300]
        assert _rows(services, mfa_challenges) == LIMIT
        refused = _options(client, token, ALICE)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == str(WINDOW)
        assert refused.json()["error"] == "too_many_requests"
        assert _rows(services, mfa_challenges) == LIMIT
        # The upstream budget of the same address is a different kind, still whole.
        assert _start(client, ALICE).status_code == 303
        assert _options(client, token, BOB).status_code == 200
        served.clock.advance(WINDOW)
        assert _options(client, token, ALICE).status_code == 200
    assert _rows(services, mfa_challenges) == LIMIT + 2


def test_failed_upstream_callbacks_and_passkey_sign_ins_stop_auditing_at_the_budget(
    served: Served,
) -> None:
    services = served.services
    with httpx.Client(base_url=served.url, timeout=10) as client:
        made_up = {"state": "x" * 40, "authCode": "nothing"}
        for _ in range(LIMIT):
            failed = client.get(
                f"/login/upstream/{DINGTALK}/callback",
                params=made_up,
                headers={"X-Forwarded-For": ALICE, "Accept": "text/html"},
            )
            assert failed.status_code == 400
        refused = client.get(
            f"/login/upstream/{DINGTALK}/callback",
            params=made_up,
            headers={"X-Forwarded-For": ALICE, "Accept": "text/html"},
        )
        assert refused.status_code == 429 and refused.headers["retry-after"] == str(WINDOW)
        assert len(events(services, "login.failed")) == LIMIT

        token = csrf_token(client.get("/login").text)
        junk = {"csrf_token": token, "handle": "h" * 32, "answer": "{}"}
        for _ in range(LIMIT):
            failed = client.post("/login/passkey", data=junk, headers={"X-Forwarded-For": BOB})
            assert failed.status_code == 401
        refused = client.post("/login/passkey", data=junk, headers={"X-Forwarded-For": BOB})
        assert refused.status_code == 429 and "retry-after" in refused.headers
        assert len(events(services, "mfa.failed")) == LIMIT
