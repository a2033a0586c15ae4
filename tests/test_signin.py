"""The sign-in core without HTTP: the answers every protocol front gets, on SQLite and PostgreSQL.

The OIDC front's end-to-end behaviour is covered by test_authorize.py / test_sso_flows.py; here
the core is asked directly, the way a CAS or SAML front will ask it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from idhub.bootstrap import Services
from idhub.core.audit import EventType
from idhub.core.clock import FrozenClock
from idhub.core.consent import ConsentNeed
from idhub.core.identity import User
from idhub.core.logout import LogoutNotifier
from idhub.core.sessions import Participant
from idhub.core.signin import (
    ConsentNeeded,
    LoginNeeded,
    Refused,
    SignedIn,
    SignInRequest,
)
from idhub.errors import AuthenticationFailed

NOW = 1_800_000_000.0
PASSWORD = "correct horse battery staple"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def hub(
    make_settings: Callable[..., Any],
    make_services: Callable[..., Services],
    db_url: str,
    clock: FrozenClock,
) -> Services:
    return make_services(make_settings(db_url), clock=clock)


def _person(hub: Services, name: str) -> User:
    return hub.identity.create_user(username=name, password_hash=hub.password_hasher.hash(PASSWORD))


def _ask(**changes: Any) -> SignInRequest:
    values: dict[str, Any] = {"client_id": "erp", "first_party": True, "scopes": ("openid",)}
    values.update(changes)
    return SignInRequest(**values)


def _events(hub: Services, event: EventType) -> list[Any]:
    return [e for e in hub.audit_log.search(limit=1000) if e.event_type == event.value]


def test_no_cookie_needs_login_and_passive_is_refused(hub: Services) -> None:
    assert hub.signin.evaluate(None, _ask()) == LoginNeeded("no_session")
    refused = hub.signin.evaluate(None, _ask(passive=True))
    assert isinstance(refused, Refused) and refused.error == "login_required"


def test_password_sign_in_then_the_session_is_used(hub: Services) -> None:
    alice = _person(hub, "alice")
    result = hub.signin.password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    assert result.user.id == alice.id and result.session.amr == ("pwd",)
    outcome = hub.signin.evaluate(result.cookie, _ask())
    assert isinstance(outcome, SignedIn) and outcome.session.sid == result.session.sid
    with pytest.raises(AuthenticationFailed):
        hub.signin.password_sign_in("alice", "wrong", cookie=None, ctx=None)


def test_force_login_and_max_age_are_satisfied_only_by_a_fresh_sign_in(
    hub: Services, clock: FrozenClock
) -> None:
    _person(hub, "alice")
    first = hub.signin.password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    clock.advance(120)
    assert hub.signin.evaluate(first.cookie, _ask(force_login=True)) == LoginNeeded("prompt_login")
    assert hub.signin.evaluate(first.cookie, _ask(max_age=60)) == LoginNeeded("max_age")
    # The front carries a login ticket through the login page; a sign-in after it counts.
    ticket = hub.signin.login_ticket()
    clock.advance(1)
    again = hub.signin.password_sign_in("alice", PASSWORD, cookie=first.cookie, ctx=None)
    assert again.session.sid == first.session.sid  # same person: the session keeps its sid
    fresh = hub.signin.fresh_since(ticket)
    assert fresh == NOW + 120
    outcome = hub.signin.evaluate(again.cookie, _ask(force_login=True, fresh_since=fresh))
    assert isinstance(outcome, SignedIn)
    # A forged or stale ticket proves nothing.
    assert hub.signin.fresh_since(ticket[:-1] + ("0" if ticket[-1] != "0" else "1")) is None
    clock.advance(3600)
    assert hub.signin.fresh_since(ticket) is None


def test_consent_is_asked_remembered_and_shared_across_protocols(hub: Services) -> None:
    alice = _person(hub, "alice")
    cookie = hub.signin.password_sign_in("alice", PASSWORD, cookie=None, ctx=None).cookie
    vendor = _ask(client_id="vendor", first_party=False, scopes=("openid", "profile"))
    assert isinstance(hub.signin.evaluate(cookie, vendor), ConsentNeeded)
    refused = hub.signin.evaluate(cookie, _ask(client_id="vendor", first_party=False,
                                               scopes=("openid",), passive=True))  # fmt: skip
    assert isinstance(refused, Refused) and refused.error == "consent_required"

    denied = hub.signin.answer_consent(cookie, vendor, allowed=False, ctx=None)
    assert isinstance(denied, Refused) and denied.error == "access_denied"
    assert isinstance(hub.signin.evaluate(cookie, vendor), ConsentNeeded)  # a "no" is not kept

    granted = hub.signin.answer_consent(cookie, vendor, allowed=True, ctx=None)
    assert isinstance(granted, SignedIn)
    # The same system signing in through another protocol is not asked again.
    as_cas = _ask(client_id="vendor", first_party=False, scopes=("openid",), protocol="cas")
    assert isinstance(hub.signin.evaluate(cookie, as_cas), SignedIn)
    # More than was granted, or an explicit "ask again", asks.
    more = _ask(client_id="vendor", first_party=False, scopes=("openid", "email"))
    assert isinstance(hub.signin.evaluate(cookie, more), ConsentNeeded)
    assert isinstance(hub.signin.evaluate(cookie, _ask(force_consent=True)), ConsentNeeded)
    assert hub.consents.need(alice, client_id="erp", first_party=True, scopes=()) is (
        ConsentNeed.FIRST_PARTY
    )
    answers = [e.details["decision"] for e in _events(hub, EventType.CONSENT_GRANTED)]
    assert sorted(answers) == ["allow", "deny"]


def test_consent_answer_without_a_session_goes_to_login(hub: Services) -> None:
    vendor = _ask(client_id="vendor", first_party=False)
    assert hub.signin.answer_consent(None, vendor, allowed=True, ctx=None) == LoginNeeded(
        "no_session"
    )
    assert _events(hub, EventType.CONSENT_GRANTED) == []


def test_disabled_person_is_not_signed_in_but_can_still_sign_out(hub: Services) -> None:
    alice = _person(hub, "alice")
    cookie = hub.signin.password_sign_in("alice", PASSWORD, cookie=None, ctx=None).cookie
    hub.identity.set_disabled(alice.id, True, reason="test")
    assert hub.signin.current(cookie) is None
    assert hub.signin.evaluate(cookie, _ask()) == LoginNeeded("user_disabled")
    leaving = hub.signin.current(cookie, include_disabled=True)
    assert leaving is not None
    assert hub.signin.sign_out(leaving, reason="user_logout", ctx=None)
    assert hub.signin.current(cookie, include_disabled=True) is None


def test_another_person_on_the_browser_ends_the_previous_session(hub: Services) -> None:
    _person(hub, "alice")
    _person(hub, "bob")
    first = hub.signin.password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    second = hub.signin.password_sign_in("bob", PASSWORD, cookie=first.cookie, ctx=None)
    assert second.session.sid != first.session.sid
    ended = hub.sessions.get(first.session.sid)
    assert ended is not None and ended.end_reason == "replaced"


class _Recorder:
    def __init__(self) -> None:
        self.told: list[tuple[str, str, str]] = []

    def queue(self, participant: Participant, *, sid: str, user_sub: str, now: float) -> bool:
        self.told.append((participant.client_id, participant.protocol, sid))
        return True


def test_sign_out_tells_every_participant_through_its_own_protocol(
    hub: Services, clock: FrozenClock
) -> None:
    recorder = _Recorder()
    notifier: LogoutNotifier = recorder
    hub.logout.register_notifier("cas", notifier)
    _person(hub, "alice")
    signed = hub.signin.password_sign_in("alice", PASSWORD, cookie=None, ctx=None)
    outcome = hub.signin.evaluate(signed.cookie, _ask())
    assert isinstance(outcome, SignedIn)
    hub.signin.record_participant(outcome, _ask(client_id="oa"))
    clock.advance(1)
    hub.signin.record_participant(outcome, _ask(client_id="archive", protocol="cas"))
    session = hub.sessions.get(signed.session.sid)
    assert session is not None
    assert session.participants == (Participant("oa", "oidc"), Participant("archive", "cas"))
    assert hub.signin.sign_out(outcome, reason="user_logout", ctx=None, initiator="oa")
    assert recorder.told == [("archive", "cas", signed.session.sid)]
    (event,) = _events(hub, EventType.LOGOUT)
    assert event.details["clients"] == ["oa", "archive"] and event.details["initiator"] == "oa"
    assert not hub.signin.sign_out(outcome, reason="twice", ctx=None)
