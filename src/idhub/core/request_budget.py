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
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from idhub.core.clock import Clock
from idhub.core.throttle import source_of

# The kinds of anonymous write that are budgeted; each has its own counter per source.
UPSTREAM_START = "upstream_start"
UPSTREAM_CALLBACK = "upstream_callback"
PASSKEY_OPTIONS = "passkey_options"
PASSKEY_SIGN_IN = "passkey_sign_in"
KINDS = (UPSTREAM_START, UPSTREAM_CALLBACK, PASSKEY_OPTIONS, PASSKEY_SIGN_IN)
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


class RequestBudget:
    def __init__(self, rule: BudgetRule, *, clock: Clock) -> None:
        if rule.limit < 1 or rule.window <= 0 or rule.max_sources < 1:
            raise ValueError("a request budget needs a positive limit, window and size")
        self._rule = rule
        self._clock = clock
        self._lock = threading.Lock()
        # (kind, source) -> (window start, writes spent in it); oldest use first.
        self._spent: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._refused = 0

    @property
    def rule(self) -> BudgetRule:
        return self._rule

    def spend(self, kind: str, address: str | None) -> OverBudget | None:
        """Count one write of `kind` from `address`, or refuse it (nothing counted) if the
        source already spent its budget in the current window."""
        if kind not in KINDS:
            raise ValueError(f"unknown request budget kind {kind!r}")
        key = (kind, source_of(address) or NO_SOURCE)
        now = self._clock.now()
        rule = self._rule
        with self._lock:
            start, used = self._spent.get(key, (now, 0))
            # A clock stepped back counts as a fresh window rather than an endless one.
            if now - start >= rule.window or now < start:
                start, used = now, 0
            if used >= rule.limit:
                self._spent.move_to_end(key)
                self._refused += 1
                return OverBudget(kind, max(1, math.ceil(start + rule.window - now)))
            self._spent[key] = (start, used + 1)
            self._spent.move_to_end(key)
            while len(self._spent) > rule.max_sources:
                self._spent.popitem(last=False)
        return None

    def size(self) -> int:
        """How many (kind, source) counters are held; at most `max_sources`."""
        with self._lock:
            return len(self._spent)

    def refused(self) -> int:
        with self._lock:
            return self._refused
