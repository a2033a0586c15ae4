"""Signing in through an upstream provider (DingTalk, WeCom, another OpenID Connect IdP).

The flow around the port of core/upstream.py, the same for every provider:

- `begin`: a fresh random `state` (256 bits). Its keyed hash goes into a short cookie on the
  browser (`idhub_upstream`, HttpOnly, SameSite=Lax, path /login/upstream; it holds the
  bindings of up to `MAX_BINDINGS` sign-ins under way, one per tab) and, under a
  second keyed hash, into the server-side table of pending upstream sign-ins with the provider
  and where the browser returns afterwards. Stored server-side rather than sealed so that
  "single use" holds on every replica: taking a state deletes its row in one statement, and
  only the caller that deleted it goes on. The OIDC `nonce` and the PKCE `code_verifier` are
  derived from the state by HMAC, so nothing secret needs storing. Pending sign-ins live
  `STATE_TTL` seconds.
- `complete` (the provider's callback): the state from the query is checked against the
  browser's cookie in constant time (a state started in another browser is refused without
  being spent), then taken (a replay or an expired one finds nothing), then the provider
  turns the callback into an `UpstreamIdentity`, `UpstreamAccounts.find` names the idhub user
  it belongs to (never a new account), the user must be enabled and not locked, and the
  sign-in core starts the session (`SignInCore.upstream_sign_in`) with the provider's `amr`
  and `acr` `urn:idhub:acr:upstream`, or asks for the second factor first.

Every step is audited: `login.upstream_started`, then `login.succeeded` (method "upstream",
the provider) in the transaction that starts the session, or `login.failed` with a reason
code. Codes, tokens and states never reach the trail.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.clock import Clock
from idhub.core.crypto import KeyedHasher, new_token
from idhub.core.identity import User
from idhub.core.signin import PasswordStep, SignInCore
from idhub.core.transactions import UnitOfWork
from idhub.core.upstream import UpstreamAccounts, UpstreamFailed, UpstreamIdentity, UpstreamProvider

STATE_TTL = 600.0
STATE_COOKIE = "idhub_upstream"
MAX_STATE = 100
# Sign-ins one browser may have under way at once (tabs): the cookie holds this many
# bindings, newest last, and the oldest goes first. Each is 64 hex characters, so the cookie
# stays far below the 4 KB browsers keep.
MAX_BINDINGS = 4
_BINDING_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


def _bindings(cookie: str | None) -> list[str]:
    """The well-formed bindings of a state cookie (anything else in it is ignored)."""
    return [
        part
        for part in (cookie or "").split(".")[: MAX_BINDINGS * 2]
        if len(part) == _BINDING_LENGTH and set(part) <= _HEX
    ]


@dataclass(frozen=True)
class PendingUpstream:
    """What `begin` remembers about a browser it sent upstream."""

    provider: str
    return_to: str | None
    created_at: float


class UpstreamStates(Protocol):
    """The server-side store of pending upstream sign-ins (adapters/upstream_states.py)."""

    def put(self, key: str, pending: PendingUpstream, *, expires_at: float) -> None: ...

    def take(self, key: str, *, now: float) -> PendingUpstream | None:
        """Removes the entry under `key` and returns it if it had not expired; None when
        there is none (never issued, already taken, or expired). Only one caller ever gets
        a given entry, across replicas."""
        ...


@runtime_checkable
class BrowserAware(Protocol):
    """A provider whose login page depends on the browser: WeCom sends its own app's browser
    (user agent `wxwork`) to the in-app OAuth page instead of the QR code page."""

    def authorization_url_for(
        self, *, user_agent: str, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str: ...


@dataclass(frozen=True)
class UpstreamStart:
    url: str
    binding: str  # what binds the state to this browser (`cookie_after` puts it in the cookie)

    def cookie_after(self, cookie: str | None) -> str:
        """The new value of STATE_COOKIE: the browser's other sign-ins under way (up to
        MAX_BINDINGS - 1, newest kept) and this one, so a second tab does not void the first."""
        kept = [b for b in _bindings(cookie) if b != self.binding][-(MAX_BINDINGS - 1) :]
        return ".".join([*kept, self.binding])


@dataclass(frozen=True)
class UpstreamDone:
    step: PasswordStep
    return_to: str | None
    provider: str


@dataclass(frozen=True)
class SystemAsking:
    """The system the browser goes on to after signing in (from `return_to`): what the
    second-factor rules need to know about it."""

    client_id: str | None = None
    acr_values: tuple[str, ...] = ()
    protocol: str = "oidc"


class AccountsByProvider:
    """`UpstreamAccounts` that asks the finder registered for the identity's provider."""

    def __init__(self, finders: Mapping[str, UpstreamAccounts] | None = None) -> None:
        self._finders: dict[str, UpstreamAccounts] = dict(finders or {})

    def add(self, provider: str, finder: UpstreamAccounts) -> None:
        self._finders[provider] = finder

    def find(self, identity: UpstreamIdentity) -> User | None:
        finder = self._finders.get(identity.provider)
        return finder.find(identity) if finder is not None else None


class UpstreamSignIn:
    """`services.upstream`: the flow for every configured upstream provider."""

    def __init__(
        self,
        *,
        providers: Sequence[UpstreamProvider],
        accounts: UpstreamAccounts,
        states: UpstreamStates,
        signin: SignInCore,
        hasher: KeyedHasher,
        audit: Auditor,
        clock: Clock,
        uow: UnitOfWork,
        ttl: float = STATE_TTL,
    ) -> None:
        self._uow = uow
        self._providers = {p.name: p for p in providers}
        self._accounts = accounts
        self._states = states
        self._signin = signin
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self.ttl = ttl

    def providers(self) -> list[UpstreamProvider]:
        """For the login page's buttons, in configuration order."""
        return list(self._providers.values())

    def provider(self, name: str) -> UpstreamProvider | None:
        return self._providers.get(name)

    # ------------------------------------------------------------------ the way up

    def begin(
        self,
        name: str,
        *,
        redirect_uri: str,
        return_to: str | None,
        ctx: RequestContext | None,
    ) -> UpstreamStart:
        """Where to send the browser, and the cookie that binds the state to it. Raises
        `UpstreamFailed` (code `unknown_provider`)."""
        provider = self._providers.get(name)
        if provider is None:
            raise UpstreamFailed(f"no upstream provider named {name!r}", code="unknown_provider")
        state = new_token(32)
        now = self._clock.now()
        pending = PendingUpstream(provider=name, return_to=return_to, created_at=now)
        nonce, verifier = self._nonce(state), self._verifier(state)
        agent = (ctx.user_agent if ctx is not None else None) or ""
        if isinstance(provider, BrowserAware):
            url = provider.authorization_url_for(
                user_agent=agent,
                redirect_uri=redirect_uri,
                state=state,
                nonce=nonce,
                code_verifier=verifier,
            )
        else:
            url = provider.authorization_url(
                redirect_uri=redirect_uri, state=state, nonce=nonce, code_verifier=verifier
            )
        with self._uow.atomic() as tx:
            self._states.put(self._key(state), pending, expires_at=now + self.ttl)
            tx.record(
                EventType.LOGIN_UPSTREAM_STARTED,
                actor=Actor("user", None),
                target=name,
                details={"provider": name, "kind": provider.kind},
                ctx=ctx,
            )
        return UpstreamStart(url=url, binding=self._binding(state))

    # ------------------------------------------------------------------ the way back

    def complete(
        self,
        name: str,
        *,
        redirect_uri: str,
        params: Mapping[str, str],
        state_cookie: str | None,
        session_cookie: str | None,
        ctx: RequestContext | None,
        device_cookie: str | None = None,
        system_for: Callable[[str | None], SystemAsking] | None = None,
    ) -> UpstreamDone:
        """The provider's callback. `system_for` names the system behind the stored return
        path (its second-factor needs). Raises `UpstreamFailed` with a reason code (audited
        as `login.failed`); the caller shows its localized page."""
        provider = self._providers.get(name)
        if provider is None:
            raise UpstreamFailed(f"no upstream provider named {name!r}", code="unknown_provider")
        try:
            pending = self._take_state(name, params.get("state"), state_cookie)
            state = str(params.get("state"))
            identity = provider.complete(
                redirect_uri=redirect_uri,
                params=params,
                nonce=self._nonce(state),
                code_verifier=self._verifier(state),
            )
            user = self._accounts.find(identity)
        except UpstreamFailed as exc:
            self._failed(name, provider.kind, exc.code, None, None, ctx)
            raise
        reason = self._refusal(user)
        if reason is not None:
            self._failed(name, provider.kind, reason, user, identity, ctx)
            raise UpstreamFailed(_REFUSALS[reason], code=reason)
        assert user is not None
        asking = system_for(pending.return_to) if system_for is not None else SystemAsking()
        step = self._signin.upstream_sign_in(
            user,
            amr=identity.amr,
            provider=name,
            cookie=session_cookie,
            ctx=ctx,
            device_cookie=device_cookie,
            client_id=asking.client_id,
            acr_values=asking.acr_values,
            protocol=asking.protocol,
        )
        return UpstreamDone(step=step, return_to=pending.return_to, provider=name)

    def _take_state(
        self, name: str, state: str | None, state_cookie: str | None
    ) -> PendingUpstream:
        if not state or len(state) > MAX_STATE:
            raise UpstreamFailed("the sign-in came back without its state", code="state_missing")
        binding = self._binding(state)
        # Every binding is compared, in constant time each, whatever the first ones gave.
        matches = [hmac.compare_digest(binding, b) for b in _bindings(state_cookie)]
        if not any(matches):
            # Started in another browser (or the cookie is gone): not spent, not ours.
            raise UpstreamFailed(
                "this sign-in was not started in this browser", code="state_foreign"
            )
        pending = self._states.take(self._key(state), now=self._clock.now())
        if pending is None:
            raise UpstreamFailed(
                "this sign-in was already used or has expired", code="state_unknown"
            )
        if pending.provider != name:
            raise UpstreamFailed("the sign-in came back to another provider", code="state_provider")
        return pending

    def _refusal(self, user: User | None) -> str | None:
        if user is None:
            return "unknown_user"
        if user.disabled:
            return "user_disabled"
        if user.is_locked(self._clock.now()):
            return "user_locked"
        return None

    def _failed(
        self,
        name: str,
        kind: str,
        reason: str,
        user: User | None,
        identity: UpstreamIdentity | None,
        ctx: RequestContext | None,
    ) -> None:
        details: dict[str, object] = {
            "method": "upstream",
            "provider": name,
            "kind": kind,
            "reason": reason,
        }
        if identity is not None:
            # The provider's id for the person (a unionId, a WeCom userid, an OIDC `sub`):
            # what an admin needs to find why nobody matched. Never the code or a token.
            details["subject"] = identity.subject
        self._audit.record(
            EventType.LOGIN_FAILED,
            actor=Actor("user", user.sub if user is not None else None),
            target=user.username if user is not None else None,
            outcome="failure",
            details=details,
            ctx=ctx,
        )

    # ------------------------------------------------------------------ derived values

    def _key(self, state: str) -> str:
        return self._hasher.hash(f"key:{state}")

    def cookie_after_callback(self, cookie: str | None, state: str | None) -> str | None:
        """The browser's state cookie once the callback for `state` is answered: that state's
        binding gone (spent, or never this browser's), the other tabs' kept; None when none
        is left."""
        spent = self._binding(state) if state and len(state) <= MAX_STATE else None
        kept = [b for b in _bindings(cookie) if not (spent and hmac.compare_digest(b, spent))]
        return ".".join(kept) or None

    def _binding(self, state: str) -> str:
        return self._hasher.hash(f"browser:{state}")

    def _nonce(self, state: str) -> str:
        return self._hasher.hash(f"nonce:{state}")[:32]

    def _verifier(self, state: str) -> str:
        # 64 characters of [0-9a-f]: within RFC 7636's alphabet and length.
        return self._hasher.hash(f"pkce:{state}")


_REFUSALS = {
    "unknown_user": "no idhub account belongs to this person",
    "user_disabled": "this account is disabled",
    "user_locked": "this account is locked for now",
}
