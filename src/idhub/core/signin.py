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
browser" are decided here once, so no front re-implements them. So is the second factor: a
session whose level (`acr`, core/assurance.py) is below what the request needs gets
`LoginNeeded("second_factor")`, and the login page asks for it (`begin_password_sign_in`,
`complete_second_factor`, `passkey_sign_in`, `login_page_step`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from idhub.core.assurance import (
    ACR_MFA,
    ACR_PASSWORD,
    ACR_REMEMBERED,
    ACR_UPSTREAM,
    AMR_HARDWARE_KEY,
    AMR_OTP,
    AMR_PASSWORD,
    AMR_USER_PRESENCE,
    MfaRequirements,
    level_of,
    plan_required_level,
)
from idhub.core.audit import Actor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.consent import ConsentNeed, Consents
from idhub.core.identity import User
from idhub.core.login_tickets import LoginTickets
from idhub.core.mfa import SecondFactors
from idhub.core.passkeys import Passkeys
from idhub.core.pending_logins import PendingLogin, PendingLogins
from idhub.core.remembered_devices import RememberedDevices
from idhub.core.sessions import SsoSession, SsoSessions
from idhub.core.transactions import UnitOfWork
from idhub.errors import AuthenticationFailed


class UserById(Protocol):
    def get_user(self, user_id: int) -> User | None: ...


class PasswordAuthenticator(Protocol):
    def authenticate(
        self,
        username: str,
        password: str,
        *,
        ctx: RequestContext | None,
        record_success: bool = True,
    ) -> User:
        """The signed-in user, or raises `AuthenticationFailed` / `DirectoryUnavailable`."""
        ...

    def record_success(self, user: User, *, ctx: RequestContext | None) -> None:
        """Records `login.succeeded` (when `authenticate` was told not to)."""
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
    ticket when the browser returns from the login page for this very request; `acr_values` are
    the assurance levels the system would accept (OIDC `acr_values`, core/assurance.py).
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
    acr_values: tuple[str, ...] = ()


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
    # Set when the person asked to be remembered on this browser (the device cookie).
    device_cookie: str | None = None


@dataclass(frozen=True)
class SecondFactorNeeded:
    """The first factor passed (or the browser's session is this person's): ask for a second.
    `pending` goes into the form and comes back with the answer."""

    user: User
    pending: str
    methods: tuple[str, ...]


@dataclass(frozen=True)
class EnrolmentNeeded:
    """The person must use a second factor and has none: send them to enrol
    (`/account/security`). `sign_in` is the password-level session started for that page."""

    user: User
    sign_in: PasswordSignIn | None = None


PasswordStep = PasswordSignIn | SecondFactorNeeded | EnrolmentNeeded


@dataclass(frozen=True)
class SignInFactors:
    """What the second-factor rules need; built in bootstrap.py."""

    requirements: MfaRequirements
    factors: SecondFactors
    passkeys: Passkeys
    devices: RememberedDevices
    pending: PendingLogins
    # (system id, protocol) -> whether that system is registered with `require_mfa`
    system_requires: Callable[[str, str], bool]


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
        mfa: SignInFactors | None = None,
        uow: UnitOfWork,
    ) -> None:
        self._uow = uow
        self._mfa = mfa
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
        needed = self._needed_level(
            user, request.client_id, request.acr_values, protocol=request.protocol
        )
        if level_of(session.acr) < needed:
            if request.passive:
                return Refused("login_required", "the user must present a second factor")
            return LoginNeeded("second_factor")
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
        user = self._authenticator.authenticate(username, password, ctx=ctx, record_success=False)
        return self._start(
            user, amr=amr, acr=None, cookie=cookie, ctx=ctx, then=self._password_event(user, ctx)
        )

    def _password_event(self, user: User, ctx: RequestContext | None) -> Callable[[], None]:
        return lambda: self._authenticator.record_success(user, ctx=ctx)

    def _start(
        self,
        user: User,
        *,
        amr: Sequence[str],
        acr: str | None,
        cookie: str | None,
        ctx: RequestContext | None,
        then: Callable[[], None] | None = None,
    ) -> PasswordSignIn:
        """Starts (or renews) the session; `then` records the sign-in's event, in the same
        transaction as the session: no session without its event, and no event of a
        sign-in whose session was never stored."""
        with self._uow.atomic():
            previous = self._sessions.resolve(cookie)
            if previous is not None and previous.user_id != user.id:
                # Another person signs in on this browser: the previous person is logged out
                # everywhere this session reached, not silently replaced.
                self._logout.end_session(
                    previous.sid, reason="replaced", actor=Actor("user", user.sub), ctx=ctx
                )
                previous = None
            new_cookie, session = self._sessions.start(
                user, amr=list(amr), acr=acr, ctx=ctx, previous=previous
            )
            if then is not None:
                then()
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

    # ------------------------------------------------------------------ second factors

    def _needed_level(
        self,
        user: User,
        client_id: str | None,
        acr_values: Sequence[str],
        *,
        protocol: str = "oidc",
    ) -> int:
        mfa = self._mfa
        if mfa is None:
            return 0
        return plan_required_level(
            person_required=mfa.requirements.check_person_required(user),
            enrolled=mfa.factors.check_enrolled(user.id),
            system_requires=bool(client_id) and mfa.system_requires(client_id or "", protocol),
            acr_values=acr_values,
        )

    def _require_mfa(self) -> SignInFactors:
        if self._mfa is None:
            raise AuthenticationFailed("mfa_not_configured")
        return self._mfa

    def _ask_second_factor(self, user: User, *, amr: Sequence[str], needed: int) -> PasswordStep:
        mfa = self._require_mfa()
        status = mfa.factors.status(user)
        methods = (("totp",) if status.totp else ()) + (("passkey",) if status.passkeys else ())
        if status.recovery_codes_left:
            methods += ("recovery_code",)
        pending = mfa.pending.issue(
            PendingLogin(user.id, tuple(amr), max(needed, 1), self._clock.now())
        )
        return SecondFactorNeeded(user=user, pending=pending, methods=methods)

    def begin_password_sign_in(
        self,
        username: str,
        password: str,
        *,
        cookie: str | None,
        ctx: RequestContext | None,
        device_cookie: str | None = None,
        client_id: str | None = None,
        acr_values: Sequence[str] = (),
        protocol: str = "oidc",
    ) -> PasswordStep:
        """The password step of the login page: signed in (no second factor needed, or this
        browser is remembered for the person), a second factor to ask for, or enrolment
        first. A person who enrolled a factor is always asked, whatever the system needs."""
        user = self._authenticator.authenticate(username, password, ctx=ctx, record_success=False)
        return self._first_factor_passed(
            user,
            amr=(AMR_PASSWORD,),
            acr=ACR_PASSWORD,
            event=self._password_event(user, ctx),
            cookie=cookie,
            ctx=ctx,
            device_cookie=device_cookie,
            needed=self._needed_level(user, client_id, acr_values, protocol=protocol),
        )

    def upstream_sign_in(
        self,
        user: User,
        *,
        amr: Sequence[str],
        provider: str,
        cookie: str | None,
        ctx: RequestContext | None,
        device_cookie: str | None = None,
        client_id: str | None = None,
        acr_values: Sequence[str] = (),
        protocol: str = "oidc",
    ) -> PasswordStep:
        """An upstream provider (core/upstream_flow.py) vouched for `user`, who is enabled:
        the same steps as after a correct password. The upstream method counts as one factor
        (level 0, `acr` urn:idhub:acr:upstream): a request that needs a second factor gets
        it asked for here (or enrolment, or a remembered device), as after a password."""
        methods = tuple(amr) or (provider,)
        details = {"source": user.source, "amr": list(methods), "method": "upstream"}

        def event() -> None:
            with self._uow.atomic() as tx:
                tx.record(
                    EventType.LOGIN_SUCCEEDED,
                    actor=Actor("user", user.sub),
                    target=user.username,
                    details={**details, "provider": provider},
                    ctx=ctx,
                )

        return self._first_factor_passed(
            user,
            amr=methods,
            acr=ACR_UPSTREAM,
            event=event,
            cookie=cookie,
            ctx=ctx,
            device_cookie=device_cookie,
            needed=self._needed_level(user, client_id, acr_values, protocol=protocol),
        )

    def _first_factor_passed(
        self,
        user: User,
        *,
        amr: tuple[str, ...],
        acr: str,
        event: Callable[[], None],
        cookie: str | None,
        ctx: RequestContext | None,
        device_cookie: str | None,
        needed: int,
    ) -> PasswordStep:
        """Signed in at `acr` (nothing more needed), at the remembered level, a session for
        enrolment, or the second factor to ask for. `event` records the sign-in."""
        if needed == 0:
            return self._start(user, amr=amr, acr=acr, cookie=cookie, ctx=ctx, then=event)
        mfa = self._require_mfa()
        if not mfa.factors.check_enrolled(user.id):
            started = self._start(user, amr=amr, acr=acr, cookie=cookie, ctx=ctx, then=event)
            return EnrolmentNeeded(user=user, sign_in=started)
        if needed <= 1 and mfa.devices.check(device_cookie, user.id):
            return self._start(
                user, amr=amr, acr=ACR_REMEMBERED, cookie=cookie, ctx=ctx, then=event
            )
        event()  # the first factor passed; no session starts before the second factor
        return self._ask_second_factor(user, amr=amr, needed=needed)

    def login_page_step(
        self,
        cookie: str | None,
        *,
        client_id: str | None,
        acr_values: Sequence[str],
        protocol: str = "oidc",
    ) -> SecondFactorNeeded | EnrolmentNeeded | None:
        """For the login page when the browser already has a session: the second factor its
        person still owes the request (step-up), enrolment, or None (show the password form)."""
        current = self.current(cookie)
        if current is None or self._mfa is None:
            return None
        user, session = current.user, current.session
        needed = self._needed_level(user, client_id, acr_values, protocol=protocol)
        if level_of(session.acr) >= needed:
            return None
        if not self._mfa.factors.check_enrolled(user.id):
            return EnrolmentNeeded(user=user)
        step = self._ask_second_factor(user, amr=session.amr or (AMR_PASSWORD,), needed=needed)
        assert isinstance(step, SecondFactorNeeded)
        return step

    def complete_second_factor(
        self,
        pending: str | None,
        *,
        method: str,
        answer: str,
        handle: str = "",
        remember: bool = False,
        cookie: str | None,
        ctx: RequestContext | None,
    ) -> PasswordSignIn:
        """Checks the second factor (`totp` code, `recovery_code`, or a `passkey` assertion with
        its ceremony `handle`) and starts or renews the session at the MFA level. Raises
        `AuthenticationFailed` (reason `pending_expired` or `second_factor`)."""
        mfa = self._require_mfa()
        step = mfa.pending.read(pending, self._clock.now())
        user = self._users.get_user(step.user_id) if step is not None else None
        if step is None or user is None or user.disabled:
            raise AuthenticationFailed("pending_expired")
        factor = self._check_factor(user, method=method, answer=answer, handle=handle, ctx=ctx)
        amr = [a for a in step.amr if a != factor] + [factor]
        started = self._start(
            user,
            amr=amr,
            acr=ACR_MFA,
            cookie=cookie,
            ctx=ctx,
            then=lambda: mfa.factors.record_used(user, method, ctx=ctx),
        )
        if remember and mfa.devices.ttl > 0:
            device = mfa.devices.remember(user, ctx=ctx)
            return PasswordSignIn(started.cookie, user, started.session, device_cookie=device)
        return started

    def _check_factor(
        self, user: User, *, method: str, answer: str, handle: str, ctx: RequestContext | None
    ) -> str:
        factors = self._require_mfa().factors
        if factors.check_blocked(user, ctx=ctx):
            raise AuthenticationFailed("second_factor")
        factor = self._verify_factor(user, method=method, answer=answer, handle=handle, ctx=ctx)
        if factor is None:
            factors.note_failure(user)
            raise AuthenticationFailed("second_factor")
        factors.clear_failures(user)
        return factor

    def _verify_factor(
        self, user: User, *, method: str, answer: str, handle: str, ctx: RequestContext | None
    ) -> str | None:
        mfa = self._require_mfa()
        if method == "totp" and mfa.factors.check_totp(user, answer, ctx=ctx):
            return AMR_OTP
        if method == "recovery_code" and mfa.factors.use_recovery_code(user, answer, ctx=ctx):
            return AMR_OTP
        if method == "passkey":
            used = mfa.passkeys.finish_authentication(handle, answer, user_id=user.id, ctx=ctx)
            if used is not None:
                return AMR_HARDWARE_KEY
        return None

    def pending_step(self, pending: str | None) -> SecondFactorNeeded | None:
        """The step a pending login still waits for (to show it again after a wrong code)."""
        mfa = self._require_mfa()
        step = mfa.pending.read(pending, self._clock.now())
        user = self._users.get_user(step.user_id) if step is not None else None
        if step is None or user is None or pending is None:
            return None
        asked = self._ask_second_factor(user, amr=step.amr, needed=step.needed)
        assert isinstance(asked, SecondFactorNeeded)
        # The same token: a wrong answer must not extend the time the first factor counts.
        return SecondFactorNeeded(user=user, pending=pending, methods=asked.methods)

    def security_page_access(self, cookie: str | None) -> tuple[SignedIn | None, bool]:
        """The person of the account security page, and whether they must first present a
        second factor: someone who has one changes their factors only at the MFA level."""
        current = self.current(cookie)
        if current is None or self._mfa is None:
            return current, False
        owes = level_of(current.session.acr) < 2 and self._mfa.factors.check_enrolled(
            current.user.id
        )
        return current, owes

    def passkey_options(self, pending: str | None) -> dict[str, object]:
        """A WebAuthn ceremony for the person of a pending login, or (no pending login) for
        passwordless sign-in; the browser sends `handle` back with its answer."""
        mfa = self._require_mfa()
        step = mfa.pending.read(pending, self._clock.now()) if pending else None
        if pending and step is None:
            raise AuthenticationFailed("pending_expired")
        ceremony = mfa.passkeys.begin_authentication(step.user_id if step else None)
        return {"handle": ceremony.handle, "publicKey": ceremony.options}

    def passkey_sign_in(
        self, handle: str, response: str, *, cookie: str | None, ctx: RequestContext | None
    ) -> PasswordSignIn:
        """Passwordless: a passkey with user verification is both factors (amr hwk + user)."""
        mfa = self._require_mfa()
        used = mfa.passkeys.finish_authentication(handle, response, user_id=None, ctx=ctx)
        user = self._users.get_user(used.user_id) if used is not None else None
        if used is None or user is None or user.disabled or user.is_locked(self._clock.now()):
            raise AuthenticationFailed("passkey")
        return self._start(
            user,
            amr=[AMR_HARDWARE_KEY, AMR_USER_PRESENCE],
            acr=ACR_MFA,
            cookie=cookie,
            ctx=ctx,
            then=lambda: mfa.factors.record_used(user, "passkey", ctx=ctx, passwordless=True),
        )

    def raise_after_enrolment(
        self, cookie: str | None, factor: str, *, ctx: RequestContext | None
    ) -> PasswordSignIn:
        """The person just proved a new factor on the account page over their session: the
        session (same `sid`, new cookie value) now counts as signed in with it."""
        current = self.current(cookie)
        if current is None:
            raise AuthenticationFailed("no_session")
        amr = [a for a in current.session.amr or (AMR_PASSWORD,) if a != factor] + [factor]
        return self._start(current.user, amr=amr, acr=ACR_MFA, cookie=cookie, ctx=ctx)
