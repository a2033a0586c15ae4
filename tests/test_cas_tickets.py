"""CAS tickets in the database (SQLite and PostgreSQL): a validation's one consuming
transaction returns the ticket with its session and person as they are at that moment, only
once; the `cas-housekeeping` job removes what can no longer matter and keeps service tickets
while their session may still need them for single logout."""

from __future__ import annotations

import time

from idhub.bootstrap import Services
from idhub.cas.server import ValidationRequest
from idhub.cas.services import parse_service_url
from idhub.cas.tickets import TicketKind
from idhub.core.crypto import sha256_hex
from idhub.core.identity import User
from idhub.core.sessions import SsoSession

SERVICE = "https://oa.example.com/app/"


def _setup(services: Services) -> tuple[User, SsoSession]:
    user = services.identity.create_user(username="alice", email="alice@example.com")
    _, session = services.sessions.start(user, amr=["pwd"])
    services.cas_services.register("oa", urls=[SERVICE], domain="oa", first_party=True)
    return user, session


def _issue(
    services: Services,
    user: User,
    session: SsoSession | None,
    *,
    kind: TicketKind = TicketKind.SERVICE,
    now: float | None = None,
    expires_at: float | None = None,
) -> str:
    parsed = parse_service_url(SERVICE)
    assert parsed is not None
    return services.cas_tickets.issue(
        kind,
        service_name="oa",
        service_url=parsed.normalized,
        sid=session.sid if session else None,
        user_id=user.id,
        now=now if now is not None else time.time(),
        expires_at=expires_at,
    )


def test_consume_returns_the_ticket_its_session_and_person_once(services: Services) -> None:
    user, session = _setup(services)
    ticket = _issue(services, user, session)
    redeemed = services.cas_tickets.redeem(ticket, time.time())
    assert redeemed is not None
    assert redeemed.record.ticket_hash == sha256_hex(ticket)
    assert redeemed.session is not None and redeemed.session.sid == session.sid
    assert redeemed.session.is_active(time.time())
    assert redeemed.user is not None and redeemed.user.username == "alice"
    assert redeemed.user.email == "alice@example.com"
    assert services.cas_tickets.redeem(ticket, time.time()) is None


def test_a_proxy_granting_ticket_is_never_consumed_as_a_service_ticket(
    services: Services,
) -> None:
    user, session = _setup(services)
    pgt = _issue(services, user, session, kind=TicketKind.PROXY_GRANTING)
    assert services.cas_tickets.redeem(pgt, time.time()) is None
    assert services.cas_tickets.granting(pgt, time.time()) is not None


def test_the_session_and_person_are_read_as_they_are_now(services: Services) -> None:
    user, session = _setup(services)
    ended = _issue(services, user, session)
    services.sessions.end(session.sid, reason="test")
    redeemed = services.cas_tickets.redeem(ended, time.time())
    assert redeemed is not None and redeemed.session is not None
    assert not redeemed.session.is_active(time.time())
    # The server refuses such a ticket, and one of a person disabled since it was issued.
    _, fresh = services.sessions.start(user, amr=["pwd"])
    for ticket, reason in (
        (_issue(services, user, session), "session"),
        (_issue(services, user, fresh), "account"),
    ):
        if reason == "account":
            services.identity.set_disabled(user.id, True, reason="left")
        answer = services.cas.validate(ValidationRequest(ticket, SERVICE))
        assert getattr(answer, "code", None) == "INVALID_TICKET", answer
        assert reason in getattr(answer, "description", "")


def test_a_session_of_someone_else_is_not_the_tickets(services: Services) -> None:
    user, _ = _setup(services)
    bob = services.identity.create_user(username="bob")
    _, bobs = services.sessions.start(bob, amr=["pwd"])
    ticket = _issue(services, user, bobs)
    redeemed = services.cas_tickets.redeem(ticket, time.time())
    assert redeemed is not None and redeemed.session is None


def test_housekeeping_keeps_service_tickets_for_single_logout(services: Services) -> None:
    user, session = _setup(services)
    now = time.time()
    keep_for = services.settings.tokens.session_ttl + 3600
    recent_st = _issue(services, user, session, now=now - 60)
    old_st = _issue(services, user, session, now=now - keep_for - 10)
    spent_pt = _issue(services, user, session, kind=TicketKind.PROXY, now=now - 60)
    live_pgt = _issue(services, user, session, kind=TicketKind.PROXY_GRANTING, expires_at=now + 600)
    dead_pgt = _issue(
        services, user, session, kind=TicketKind.PROXY_GRANTING, now=now - 120,
        expires_at=now - 60,
    )  # fmt: skip
    assert services.cas_tickets.purge_once(now) == 3
    left = {t for t in (recent_st, old_st, spent_pt, live_pgt, dead_pgt)
            if services.cas_tickets.get(sha256_hex(t)) is not None}  # fmt: skip
    # The recent service ticket was validated (spent) long ago, yet its session lives on.
    assert left == {recent_st, live_pgt}
    assert services.cas_tickets.purge_once(now) == 0


def test_housekeeping_is_a_background_job_not_part_of_issuing(services: Services) -> None:
    assert "cas-housekeeping" in services.runtime.names
    user, session = _setup(services)
    now = time.time()
    old = _issue(services, user, session, now=now - services.settings.tokens.session_ttl - 7200)
    _issue(services, user, session)
    # Issuing no longer deletes anything on the login path.
    assert services.cas_tickets.get(sha256_hex(old)) is not None


def test_a_validation_and_its_audit_event_are_one_transaction(services: Services) -> None:
    """The ticket is spent and its validation (or refusal) recorded together: the events sit
    in the chain, which still verifies, and nothing secret is in them."""
    user, session = _setup(services)
    good = _issue(services, user, session)
    assert getattr(services.cas.validate(ValidationRequest(good, SERVICE)), "user", None)
    again = services.cas.validate(ValidationRequest(good, SERVICE))
    assert getattr(again, "code", None) == "INVALID_TICKET"
    wrong = _issue(services, user, session)
    other = services.cas.validate(ValidationRequest(wrong, "https://oa.example.com/other/"))
    assert getattr(other, "code", None) == "INVALID_SERVICE"
    kinds = [e.event_type for e in services.audit_log.search(limit=50)]
    assert kinds.count("cas.ticket_validated") == 1
    assert kinds.count("cas.ticket_rejected") == 2
    assert services.audit_log.verify().ok
    with services.engine.connect() as conn:
        dump = " ".join(str(r) for r in conn.exec_driver_sql("SELECT * FROM audit_events"))
    assert good not in dump and wrong not in dump
