"""The sign-in core: one answer to "this system wants this person signed in under these
conditions", whatever protocol asks.

Every front door (OIDC `/authorize`, CAS `/cas/login`, SAML SSO, upstream sign-in, the console,
the account page) parses its own protocol into a `SignInRequest` and renders the `SignInOutcome`
it gets back:

- `SignedIn`: use this session; the front issues its code / ticket / assertion, then calls
  `record_participant` so that ending the session reaches this system too;
- `LoginNeeded`: show the login page (with a login ticket, so coming back counts as fresh);
- `ConsentNeeded`: ask the person to approve the system, then call `answer_consent`;
- `Refused`: answer the system with this error (e.g. `login_required` for a passive request).

Session freshness, `prompt`/`max_age` semantics, consent and "another person signs in on this
browser" are decided here once, so no front re-implements them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from idhub.core.audit import Actor, RequestContext
from idhub.core.clock import Clock
from idhub.core.consent import ConsentNeed, Consents
from idhub.core.identity import User
from idhub.core.login_tickets import LoginTickets
from idhub.core.sessions import SsoSession, SsoSessions


class UserById(Protocol):
    def get_user(self, user_id: int) -> User | None: ...


class PasswordAuthenticator(Protocol):
    def authenticate(self, username: str, password: str, *, ctx: RequestContext | None) -> User:
        """The signed-in user, or raises `AuthenticationFailed` / `DirectoryUnavailable`."""
        ...


class SessionEnder(Protocol):
    def end_session(
        self,
        sid: str,
        *,
        reason: str,
        actor: Actor,
        ctx: RequestContext | None = None,
        initiator: str | None = None,
    ) -> bool: ...


@dataclass(frozen=True)
class SignInRequest:
    """What a front asks, in protocol-neutral words.

    `force_login` is OIDC `prompt=login`, CAS `renew`, SAML `ForceAuthn`; `passive` is OIDC
    `prompt=none`, CAS `gateway`, SAML `IsPassive`; `fresh_since` comes from the front's login
    ticket when the browser returns from the login page for this very request.
    """

    client_id: str
    first_party: bool
    protocol: str = "oidc"
    scopes: tuple[str, ...] = ()
    force_login: bool = False
    force_consent: bool = False
    passive: bool = False
    max_age: int | None = None
    login_hint: str | None = None
    fresh_since: float | None = None


@dataclass(frozen=True)
class SignedIn:
    session: SsoSession
    user: User


@dataclass(frozen=True)
class LoginNeeded:
    reason: str


@dataclass(frozen=True)
class ConsentNeeded:
    session: SsoSession
    user: User


@dataclass(frozen=True)
class Refused:
    """An answer for the system, in OIDC's vocabulary (other fronts map it to theirs)."""

    error: str
    description: str


SignInOutcome = SignedIn | LoginNeeded | ConsentNeeded | Refused


@dataclass(frozen=True)
class LoginDecision:
    """Whether a request may use the current session, and if not why."""

    needs_login: bool
    reason: str | None = None


def decide_login(
    session: SsoSession | None,
    user: User | None,
    *,
    prompt: Collection[str],
    max_age: int | None,
    login_hint: str | None,
    fresh_since: float | None,
    now: float,
) -> LoginDecision:
    """Pure rule. `fresh_since` is set when the browser comes back from the login page for this
    very request: a sign-in at or after that moment satisfies `prompt=login` and `max_age`
    (otherwise `max_age=0` or `prompt=login` would send it round in circles)."""
    if session is None or user is None or not session.is_active(now):
        return LoginDecision(True, "no_session")
    if user.disabled:
        return LoginDecision(True, "user_disabled")
    fresh = fresh_since is not None and session.auth_time >= fresh_since
    if fresh:
        return LoginDecision(False)
    if "login" in prompt:
        return LoginDecision(True, "prompt_login")
    # OIDC Core 3.1.2.1: max_age=0 means the same as prompt=login.
    if max_age is not None and now - session.auth_time > max_age:
        return LoginDecision(True, "max_age")
    if max_age == 0:
        return LoginDecision(True, "max_age")
    if login_hint and login_hint.strip().casefold() not in {
        user.username.casefold(),
        (user.email or "").casefold(),
    }:
        return LoginDecision(True, "login_hint_mismatch")
    return LoginDecision(False)


@dataclass(frozen=True)
class PasswordSignIn:
    """A successful sign-in at the login page: the new cookie value to set."""

    cookie: str
    user: User
    session: SsoSession


class SignInCore:
    """`services.signin`."""

    def __init__(
        self,
        *,
        sessions: SsoSessions,
        users: UserById,
        consents: Consents,
        authenticator: PasswordAuthenticator,
        logout: SessionEnder,
        tickets: LoginTickets,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._users = users
        self._consents = consents
        self._authenticator = authenticator
        self._logout = logout
        self._tickets = tickets
        self._clock = clock

    @property
    def session_ttl(self) -> float:
        return self._sessions.ttl

    # ------------------------------------------------------------------ the browser's session

    def current(self, cookie: str | None, *, include_disabled: bool = False) -> SignedIn | None:
        """The browser's live session and its person, or None. A disabled person's session
        counts only where it is about to be ended (`include_disabled`, for logout)."""
        session = self._sessions.resolve(cookie)
        user = self._users.get_user(session.user_id) if session is not None else None
        if session is None or user is None or (user.disabled and not include_disabled):
            return None
        return SignedIn(session, user)

    def login_ticket(self) -> str:
        """For the front to carry through the login page (see core/login_tickets.py)."""
        return self._tickets.issue(self._clock.now())

    def fresh_since(self, ticket: str | None) -> float | None:
        return self._tickets.since(ticket, self._clock.now())

    # ------------------------------------------------------------------ the decision

    def evaluate(self, cookie: str | None, request: SignInRequest) -> SignInOutcome:
        """May `request` be answered with the browser's session right now?"""
        now = self._clock.now()
        session = self._sessions.resolve(cookie)
        user = self._users.get_user(session.user_id) if session is not None else None
        prompt = {"login"} if request.force_login else set()
        decision = decide_login(
            session,
            user,
            prompt=prompt,
            max_age=request.max_age,
            login_hint=request.login_hint,
            fresh_since=request.fresh_since,
            now=now,
        )
        if decision.needs_login:
            if request.passive:
                return Refused("login_required", "the user must sign in")
            return LoginNeeded(decision.reason or "no_session")
        assert session is not None and user is not None
        need = self._consents.need(
            user,
            client_id=request.client_id,
            first_party=request.first_party,
            scopes=request.scopes,
            force=request.force_consent,
        )
        if need is ConsentNeed.ASK:
            if request.passive:
                return Refused("consent_required", "the user must approve this application")
            return ConsentNeeded(session, user)
        return SignedIn(session, user)

    def answer_consent(
        self,
        cookie: str | None,
        request: SignInRequest,
        *,
        allowed: bool,
        ctx: RequestContext | None,
    ) -> SignInOutcome:
        """The person answered the consent page (the front has checked its CSRF token)."""
        current = self.current(cookie)
        if current is None:
            return LoginNeeded("no_session")
        self._consents.record(
            current.user,
            client_id=request.client_id,
            scopes=request.scopes,
            allowed=allowed,
            ctx=ctx,
        )
        if not allowed:
            return Refused("access_denied", "the user denied access")
        return current

    def record_participant(self, signed_in: SignedIn, request: SignInRequest) -> None:
        """Called once the front's answer (code, ticket, assertion) is on its way: this system now
        takes part in the session and is told when it ends."""
        self._sessions.add_client(
            signed_in.session.sid, request.client_id, protocol=request.protocol
        )

    # ------------------------------------------------------------------ signing in and out

    def password_sign_in(
        self,
        username: str,
        password: str,
        *,
        cookie: str | None,
        ctx: RequestContext | None,
        amr: Sequence[str] = ("pwd",),
    ) -> PasswordSignIn:
        """Checks the password and starts (or renews) the browser's session. Raises
        `AuthenticationFailed` or `DirectoryUnavailable` as the authenticator does."""
        user = self._authenticator.authenticate(username, password, ctx=ctx)
        previous = self._sessions.resolve(cookie)
        if previous is not None and previous.user_id != user.id:
            # Another person signs in on this browser: the previous person is logged out
            # everywhere this session reached, not silently replaced.
            self._logout.end_session(
                previous.sid, reason="replaced", actor=Actor("user", user.sub), ctx=ctx
            )
            previous = None
        new_cookie, session = self._sessions.start(user, amr=list(amr), ctx=ctx, previous=previous)
        return PasswordSignIn(new_cookie, user, session)

    def sign_out(
        self,
        signed_in: SignedIn | SsoSession,
        *,
        reason: str,
        ctx: RequestContext | None,
        initiator: str | None = None,
        actor: Actor | None = None,
    ) -> bool:
        """Ends the session and notifies every system that took part in it (whatever protocol
        it signed in with). `initiator` is the system that asked, for the audit trail."""
        session = signed_in.session if isinstance(signed_in, SignedIn) else signed_in
        if actor is None:
            user = signed_in.user if isinstance(signed_in, SignedIn) else None
            user = user or self._users.get_user(session.user_id)
            actor = Actor("user", user.sub if user is not None else None)
        return self._logout.end_session(
            session.sid, reason=reason, actor=actor, ctx=ctx, initiator=initiator
        )
