"""How many server-side writes one source address may cause without signing in.

Some requests anyone may send write state before anybody is known: `GET /login/upstream/{name}`
stores an `upstream_states` row and a `login.upstream_started` audit event,
`POST /login/passkey/options` stores an `mfa_challenges` row, and a failed
`GET /login/upstream/{name}/callback` (a `login.failed`) or passwordless `POST /login/passkey`
(an `mfa.failed`) each audits one event. Unbounded, a flood from one
address grows the database and the audit trail for as long as it lasts. Each such kind of
write gets a budget per source (the address as core/throttle.py `source_of` keys it: IPv4 as
is, IPv6 by its /64): at most `limit` in a fixed window of `window` seconds; beyond that the
request is refused before anything is written, and nothing is audited either (an audit event
per refusal would be the same flood by another name).

The counters live in this process, not the database: counting a write in the database would be
a write per request again, which is what this bounds. So each worker and each replica has its
own budget (N workers allow N times the limit), which still bounds the growth per address. The
table of sources is an LRU of at most `max_sources` entries: an attacker with many addresses
can push other addresses' counters out (they start afresh), never grow memory.

Other anonymous requests are refused anyway and only their *failure event* is the write: a
password attempt refused by the throttle (`login.throttled`), a client refused by the client
throttle (`client.auth_throttled`), a failed `/token` request from no authenticated client
(`token.request_failed`), a bad CAS ticket (`cas.ticket_rejected`), a SAML request refused
(`saml.request_rejected`), a SAML LogoutRequest that ended no session (`saml.logout_answered`).
Their answer is what the protocol requires and never changes here; `admit` only decides
whether the event is written: the first `limit` per source and window are, the rest are
counted, and each window that dropped any closes with one summary (`Suppressed`, written as
`audit.suppressed` by core/failure_audit.py) saying how many of which event were not written,
so nothing is lost without a trace.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from idhub.core.clock import Clock
from idhub.core.throttle import source_of

# The kinds of anonymous write that are budgeted; each has its own counter per source.
UPSTREAM_START = "upstream_start"
UPSTREAM_CALLBACK = "upstream_callback"
PASSKEY_OPTIONS = "passkey_options"
PASSKEY_SIGN_IN = "passkey_sign_in"
# Kinds whose request is refused over the budget (`spend`).
REQUEST_KINDS = (UPSTREAM_START, UPSTREAM_CALLBACK, PASSKEY_OPTIONS, PASSKEY_SIGN_IN)
# Kinds whose request is refused anyway; only its failure event is budgeted (`admit`).
LOGIN_REFUSED = "login_refused"
CLIENT_REFUSED = "client_refused"
TOKEN_FAILED = "token_failed"  # noqa: S105 (a budget kind, not a secret)
CAS_REJECTED = "cas_rejected"
SAML_REJECTED = "saml_rejected"
# A LogoutRequest answered without a session to end (anyone may replay one).
SAML_LOGOUT_NOOP = "saml_logout_noop"
EVENT_KINDS = (
    LOGIN_REFUSED,
    CLIENT_REFUSED,
    TOKEN_FAILED,
    CAS_REJECTED,
    SAML_REJECTED,
    SAML_LOGOUT_NOOP,
)
KINDS = (*REQUEST_KINDS, *EVENT_KINDS)
# Expired counters looked at per `admit`, so closed windows are summarised while traffic lasts
# without one call paying for the whole table.
SWEEP_STEP = 4
# Requests whose address is missing or unparsable share one counter rather than going free.
NO_SOURCE = "-"


@dataclass(frozen=True)
class BudgetRule:
    limit: int = 30
    window: float = 60.0
    max_sources: int = 10_000


@dataclass(frozen=True)
class OverBudget:
    """A refusal: the source spent its budget for `kind`; `retry_after` whole seconds until
    the window ends (at least 1)."""

    kind: str
    retry_after: int


@dataclass(frozen=True)
class Suppressed:
    """Events of `kind` from `source` not written in the window [since, until): how many of
    each event type."""

    kind: str
    source: str
    since: float
    until: float
    limit: int
    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Admission:
    """Whether to write the event, and the summaries of windows that closed meanwhile (to be
    written with it, or alone if it is not)."""

    record: bool
    summaries: tuple[Suppressed, ...] = ()


class _Window:
    __slots__ = ("dropped", "start", "used")

    def __init__(self, start: float) -> None:
        self.start = start
        self.used = 0
        # Event type -> events not written in this window; empty for most windows.
        self.dropped: dict[str, int] = {}


class RequestBudget:
    def __init__(self, rule: BudgetRule, *, clock: Clock) -> None:
        if rule.limit < 1 or rule.window <= 0 or rule.max_sources < 1:
            raise ValueError("a request budget needs a positive limit, window and size")
        self._rule = rule
        self._clock = clock
        self._lock = threading.Lock()
        # (kind, source) -> its current window; least recently used first.
        self._spent: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._refused = 0
        # Summaries closed by `spend` (which writes no events), handed out by the next `admit`.
        self._pending: list[Suppressed] = []
        self._lost = 0

    @property
    def rule(self) -> BudgetRule:
        return self._rule

    def spend(self, kind: str, address: str | None) -> OverBudget | None:
        """Count one write of `kind` from `address`, or refuse it (nothing counted) if the
        source already spent its budget in the current window."""
        if kind not in REQUEST_KINDS:
            raise ValueError(f"{kind!r} is not a request budget kind")
        key = (kind, source_of(address) or NO_SOURCE)
        now = self._clock.now()
        closed: list[Suppressed] = []
        with self._lock:
            window = self._current(key, now, closed)
            if window.used >= self._rule.limit:
                self._refused += 1
                return OverBudget(kind, max(1, math.ceil(window.start + self._rule.window - now)))
            window.used += 1
            self._tidy(now, closed)
            # Windows of event kinds swept here: their summaries wait for the next `admit`
            # or `close_expired`, since a refused-request kind writes no event to carry them.
            self._pending.extend(closed)
            self._bound_pending()
        return None

    def admit(self, kind: str, address: str | None, event: str) -> Admission:
        """Count one failure event `event` of `kind` from `address`: write it if the source
        has budget left in this window, else count it as suppressed. The request itself is
        answered as before either way; only the audit write is decided here."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"{kind!r} is not a budgeted event kind")
        key = (kind, source_of(address) or NO_SOURCE)
        now = self._clock.now()
        closed: list[Suppressed] = []
        with self._lock:
            closed.extend(self._pending)
            self._pending.clear()
            window = self._current(key, now, closed)
            record = window.used < self._rule.limit
            if record:
                window.used += 1
            else:
                window.dropped[event] = window.dropped.get(event, 0) + 1
                self._refused += 1
            self._tidy(now, closed)
        return Admission(record, tuple(closed))

    def close_expired(self) -> list[Suppressed]:
        """Summaries of every window that ended with events suppressed (a background job calls
        this, so a flood that stopped is summarised without waiting for more traffic)."""
        now = self._clock.now()
        closed: list[Suppressed] = []
        with self._lock:
            closed.extend(self._pending)
            self._pending.clear()
            for key, window in list(self._spent.items()):
                if self._expired(window, now):
                    del self._spent[key]
                    self._close(key, window, closed)
        return closed

    def close_all(self) -> list[Suppressed]:
        """Summaries of every window with events suppressed so far, ended or not (at shutdown);
        their counters restart."""
        closed: list[Suppressed] = []
        with self._lock:
            closed.extend(self._pending)
            self._pending.clear()
            for key, window in self._spent.items():
                self._close(key, window, closed)
                window.dropped = {}
        return closed

    def requeue(self, summaries: Sequence[Suppressed]) -> None:
        """Summaries whose write failed, handed out again by the next `admit` or close."""
        if summaries:
            with self._lock:
                self._pending.extend(summaries)
                self._bound_pending()

    # ------------------------------------------------------------------ under the lock

    def _bound_pending(self) -> None:
        # While the audit trail cannot be written, summaries wait; at most one table's worth.
        excess = len(self._pending) - self._rule.max_sources
        if excess > 0:
            del self._pending[:excess]
            self._lost += excess

    def _expired(self, window: _Window, now: float) -> bool:
        # A clock stepped back counts as a fresh window rather than an endless one.
        return now - window.start >= self._rule.window or now < window.start

    def _current(self, key: tuple[str, str], now: float, closed: list[Suppressed]) -> _Window:
        window = self._spent.get(key)
        if window is None or self._expired(window, now):
            if window is not None:
                self._close(key, window, closed)
            window = _Window(now)
            self._spent[key] = window
        self._spent.move_to_end(key)
        return window

    def _tidy(self, now: float, closed: list[Suppressed]) -> None:
        """Forget the oldest counters beyond the size, and a few expired ones at the old end."""
        spent = self._spent
        while len(spent) > self._rule.max_sources:
            key, window = spent.popitem(last=False)
            self._close(key, window, closed)
        for _ in range(SWEEP_STEP):
            if not spent:
                break
            key, window = next(iter(spent.items()))
            if not self._expired(window, now):
                break
            del spent[key]
            self._close(key, window, closed)

    def _close(self, key: tuple[str, str], window: _Window, closed: list[Suppressed]) -> None:
        if window.dropped:
            kind, source = key
            closed.append(
                Suppressed(
                    kind=kind,
                    source=source,
                    since=window.start,
                    until=min(window.start + self._rule.window, self._clock.now()),
                    limit=self._rule.limit,
                    counts=tuple(sorted(window.dropped.items())),
                )
            )

    def size(self) -> int:
        """How many (kind, source) counters are held; at most `max_sources`."""
        with self._lock:
            return len(self._spent)

    def refused(self) -> int:
        with self._lock:
            return self._refused

    def lost(self) -> int:
        """Summaries given up because too many waited for an audit trail that failed."""
        with self._lock:
            return self._lost
