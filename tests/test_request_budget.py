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
    CAS_REJECTED,
    CLIENT_REFUSED,
    LOGIN_REFUSED,
    PASSKEY_OPTIONS,
    SAML_LOGOUT_NOOP,
    SAML_REJECTED,
    TOKEN_FAILED,
    UPSTREAM_START,
    BudgetRule,
    RequestBudget,
    Suppressed,
)
from idhub.errors import ConfigError
from tests.conftest import free_port, serve
from tests.dingtalk_fake import DingTalkFake
from tests.saml_sp import running_sp
from tests.sso_support import csrf_token, events, login
from tests.upstream_support import DINGTALK, ENV, sources_toml
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


# ------------------------------------------------------------------ failure events: the rule


def test_failure_events_beyond_the_budget_are_counted_and_summarised_once_per_window() -> None:
    clock = FrozenClock(1_000.0)
    budget = RequestBudget(BudgetRule(limit=2, window=60, max_sources=100), clock=clock)
    admitted = [budget.admit(CAS_REJECTED, ALICE, "cas.ticket_rejected") for _ in range(5)]
    assert [a.record for a in admitted] == [True, True, False, False, False]
    assert all(not a.summaries for a in admitted)
    # Another address and another kind are untouched.
    assert budget.admit(CAS_REJECTED, BOB, "cas.ticket_rejected").record
    assert budget.admit(LOGIN_REFUSED, ALICE, "login.throttled").record
    assert budget.close_expired() == []
    clock.advance(60)
    # The window that dropped three closes with one summary, handed to the next event...
    first = budget.admit(CAS_REJECTED, ALICE, "cas.ticket_rejected")
    assert first.record
    (summary,) = first.summaries
    assert (summary.kind, summary.source, summary.limit) == (CAS_REJECTED, ALICE, 2)
    assert summary.counts == (("cas.ticket_rejected", 3),)
    assert (summary.since, summary.until) == (1_000.0, 1_060.0)
    # ...and only once; windows that dropped nothing close without one.
    assert budget.close_expired() == []
    assert not budget.admit(LOGIN_REFUSED, ALICE, "login.throttled").summaries


def test_summaries_are_closed_without_more_traffic_and_at_shutdown() -> None:
    clock = FrozenClock(1_000.0)
    budget = RequestBudget(BudgetRule(limit=1, window=60, max_sources=100), clock=clock)
    for event in ("login.throttled", "login.failed", "login.throttled"):
        budget.admit(LOGIN_REFUSED, ALICE, event)
    budget.admit(TOKEN_FAILED, "2001:db8:1:2::5", "token.request_failed")
    budget.admit(TOKEN_FAILED, "2001:db8:1:2::6", "token.request_failed")
    (open_one, other) = sorted(budget.close_all(), key=lambda s: s.kind)
    assert open_one.counts == (("login.failed", 1), ("login.throttled", 1))
    assert other.source == "2001:db8:1:2::/64" and other.counts == (("token.request_failed", 1),)
    assert budget.close_all() == []  # counted once
    budget.admit(LOGIN_REFUSED, ALICE, "login.throttled")
    clock.advance(61)
    (late,) = budget.close_expired()
    assert late.counts == (("login.throttled", 1),) and budget.size() == 0


def test_an_evicted_source_is_summarised_not_forgotten() -> None:
    budget = RequestBudget(BudgetRule(limit=1, window=60, max_sources=100), clock=FrozenClock())
    budget.admit(SAML_REJECTED, ALICE, "saml.request_rejected")
    budget.admit(SAML_REJECTED, ALICE, "saml.request_rejected")
    closed: list[Suppressed] = []
    for n in range(150):
        closed.extend(budget.admit(SAML_REJECTED, f"10.0.0.{n}", "saml.request_rejected").summaries)
    assert [(s.source, s.counts) for s in closed] == [(ALICE, (("saml.request_rejected", 1),))]
    assert budget.size() == 100
    with pytest.raises(ValueError):
        budget.admit(UPSTREAM_START, ALICE, "login.upstream_started")
    with pytest.raises(ValueError):
        budget.spend(SAML_REJECTED, ALICE)


# ------------------------------------------------------------------ failure events over HTTP

# One failure locks an address (and a client name) at once, so every later request is a
# refusal, answered before any password or secret is checked.
GUARD_TOML = (
    "\n[throttle]\nip_free = 1\nip_limit = 1\nip_lock = 600\n"
    "client_ip_free = 1\nclient_ip_limit = 1\nclient_ip_lock = 600\n"
)


@pytest.fixture
def guarded(
    make_settings: Callable[..., Settings], make_services: Callable[..., Services], db_url: str
) -> Iterator[Served]:
    """A real idhub, the clock the test's, a tight throttle, the budget of BUDGET_TOML."""
    port = free_port()
    settings = make_settings(
        db_url, issuer=f"http://127.0.0.1:{port}", toml=BUDGET_TOML + GUARD_TOML
    )
    clock = FrozenClock(time.time())
    services = make_services(settings, clock=clock)
    services.migrate()
    services.keys.ensure_active(lambda _line: None)
    with serve(services, port) as url:
        yield Served(url, services, clock)


def _summaries(served: Served) -> list[dict[str, Any]]:
    """The `audit.suppressed` events once the window has passed and the job's flush ran."""
    served.clock.advance(WINDOW)
    served.services.failure_audit.flush_expired()
    return [e["details"] for e in events(served.services, "audit.suppressed")]


def test_refused_password_attempts_are_audited_within_the_budget(guarded: Served) -> None:
    services = guarded.services
    alice = {"X-Forwarded-For": ALICE, "Accept-Language": "en"}
    with httpx.Client(base_url=guarded.url, headers=alice) as client:
        assert login(client, "nobody", "Password1!x").status_code == 401  # locks the address
        refused = [login(client, f"name{i}", "Password1!x") for i in range(LIMIT + 4)]
    # Every refusal is answered as before: 401, the throttle's message and Retry-After.
    assert {(r.status_code, r.headers["retry-after"]) for r in refused} == {(401, "600")}
    assert all("Too many attempts" in r.text for r in refused)
    assert len(events(services, "login.throttled")) == LIMIT
    (summary,) = _summaries(guarded)
    assert summary["kind"] == LOGIN_REFUSED and summary["source"] == ALICE
    assert summary["suppressed"] == {"login.throttled": 4} and summary["limit"] == LIMIT
    # Another address is refused by nothing and audited as ever.
    with httpx.Client(base_url=guarded.url, headers={"X-Forwarded-For": BOB}) as client:
        assert login(client, "nobody", "Password1!x").status_code == 401
    assert len(events(services, "login.failed")) == 2
    assert services.audit_log.verify().ok


def test_token_failures_of_no_proven_client_are_audited_within_the_budget(
    guarded: Served,
) -> None:
    services = guarded.services
    _, secret = services.clients.register(
        "batch", grant_types=["client_credentials"], scope="authz"
    )
    assert secret is not None
    alice = {"X-Forwarded-For": ALICE}
    with httpx.Client(base_url=guarded.url, headers=alice) as client:
        # A client that proved who it is: every failure and every token as before.
        for _ in range(LIMIT + 2):
            bad_scope = client.post(
                "/token",
                data={"grant_type": "client_credentials", "scope": "admin"},
                auth=("batch", secret),
            )
            assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"
            ok = client.post(
                "/token", data={"grant_type": "client_credentials"}, auth=("batch", secret)
            )
            assert ok.status_code == 200, ok.text
        # No client proven: the same RFC 6749 answer every time, the event within the budget.
        anonymous = [
            client.post("/token", data={"grant_type": "client_credentials", "client_id": "x"})
            for _ in range(LIMIT + 3)
        ]
    assert {(r.status_code, r.json()["error"]) for r in anonymous} == {(401, "invalid_client")}
    failed = events(services, "token.request_failed")
    assert [e["actor_id"] for e in failed] == ["batch"] * (LIMIT + 2) + ["x"] * LIMIT
    assert len(events(services, "token.issued")) == LIMIT + 2
    summaries = {s["kind"]: s for s in _summaries(guarded)}
    assert summaries[TOKEN_FAILED]["suppressed"] == {"token.request_failed": 3}
    assert services.audit_log.verify().ok


def test_client_refusals_at_introspection_and_revocation_are_audited_within_the_budget(
    guarded: Served,
) -> None:
    services = guarded.services
    bob = {"X-Forwarded-For": BOB}
    answers = []
    with httpx.Client(base_url=guarded.url, headers=bob) as client:
        for path in ["/introspect"] * (LIMIT + 1) + ["/revoke"] * 2:
            answers.append(client.post(path, data={"token": "t"}, auth=("nobody", "wrong")))
    assert {(r.status_code, r.json()["error"]) for r in answers} == {(401, "invalid_client")}
    # The first failure locked the name from this address; the rest were refused.
    assert len(events(services, "client.auth_throttled")) == LIMIT
    (summary,) = _summaries(guarded)
    assert summary["kind"] == CLIENT_REFUSED and summary["source"] == BOB
    assert summary["suppressed"] == {"client.auth_throttled": 2}


def test_bad_cas_tickets_are_audited_within_the_budget(guarded: Served) -> None:
    services = guarded.services
    service = "https://oa.example.com/cas"
    with httpx.Client(base_url=guarded.url, headers={"X-Forwarded-For": ALICE}) as client:
        spec = [
            client.get("/cas/serviceValidate", params={"ticket": "XX-1", "service": service})
            for _ in range(LIMIT)
        ]
        unknown = [
            client.get(
                "/cas/serviceValidate", params={"ticket": "ST-" + "A" * 27, "service": service}
            )
            for _ in range(2)
        ]
        proxy = client.get("/cas/proxy", params={"pgt": "PGT-x", "targetService": service})
    assert all('code="INVALID_TICKET_SPEC"' in r.text for r in spec)
    assert all('code="INVALID_TICKET"' in r.text for r in unknown)
    assert 'code="INVALID_TICKET"' in proxy.text
    assert len(events(services, "cas.ticket_rejected")) == LIMIT
    (summary,) = _summaries(guarded)
    assert summary["kind"] == CAS_REJECTED and summary["suppressed"] == {"cas.ticket_rejected": 3}
    assert services.audit_log.verify().ok


def test_rejected_saml_requests_are_audited_within_the_budget(guarded: Served) -> None:
    services = guarded.services
    with httpx.Client(base_url=guarded.url, headers={"X-Forwarded-For": ALICE}) as client:
        answers = [
            client.get("/saml/sso", params={"SAMLRequest": "not-a-request"})
            for _ in range(LIMIT + 2)
        ]
    assert {r.status_code for r in answers} == {400}
    assert all("saml_request_rejected" in r.text for r in answers)
    assert len(events(services, "saml.request_rejected")) == LIMIT
    (summary,) = _summaries(guarded)
    assert summary["kind"] == SAML_REJECTED
    assert summary["suppressed"] == {"saml.request_rejected": 2}


def test_logout_requests_that_end_no_session_are_audited_within_the_budget(
    guarded: Served,
) -> None:
    services = guarded.services
    with running_sp(guarded.url) as sp:
        services.saml_sps.add("erp", metadata_xml=sp.metadata(), domain="erp", first_party=True)
        # One signed LogoutRequest, replayed: nobody is signed in, nothing ends.
        url = sp.logout_url("nobody", None)
        with httpx.Client(headers={"X-Forwarded-For": ALICE}) as client:
            answers = [client.get(url) for _ in range(LIMIT + 2)]
    assert len({(r.status_code, r.headers.get("location", "")[:40]) for r in answers}) == 1
    assert answers[0].status_code in (200, 303), answers[0].text[:300]
    answered = events(services, "saml.logout_answered")
    assert len(answered) == LIMIT and not answered[0]["details"]["session_ended"]
    (summary,) = _summaries(guarded)
    assert summary["kind"] == SAML_LOGOUT_NOOP
    assert summary["suppressed"] == {"saml.logout_answered": 2}


def test_summaries_whose_write_failed_are_handed_out_again_within_a_bound() -> None:
    clock = FrozenClock(1_000.0)
    budget = RequestBudget(BudgetRule(limit=1, window=60, max_sources=100), clock=clock)
    for _ in range(3):
        budget.admit(TOKEN_FAILED, ALICE, "token.request_failed")
    clock.advance(60)
    (summary,) = budget.close_expired()
    budget.requeue([summary])  # the audit write failed
    assert budget.admit(TOKEN_FAILED, BOB, "token.request_failed").summaries == (summary,)
    budget.requeue([summary] * 150)
    assert len(budget.close_all()) == 100 and budget.lost() == 50
