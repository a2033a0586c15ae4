"""Throttling of guesses: failure counters per source address, per account and per client,
each with a free allowance, then growing delays, then a temporary lock.

A counter lives in the database (one row per key, shared by every replica and worker): a
failed attempt costs one small upsert per key, a refused attempt costs only the read that
refused it, and a successful attempt writes nothing unless it has counters to clear.

While a key waits out a delay or a lock, attempts under it are refused before any password or
secret is looked at, so a correct guess during a lock is refused like any other, and refused
attempts are not counted again (a flood against a locked key writes nothing).
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections import Counter as _Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from idhub.core.clock import Clock

# Sign-in: the address a browser comes from, and the account named (a user's id, or a keyed
# fingerprint of a name that is no account, so unknown names lock like real ones).
IP = "ip"
ACCOUNT = "account"
# Client authentication at the token, introspection and revocation endpoints: a client id
# tried from one address (`client_key`), and the address across all clients.
CLIENT = "client"
CLIENT_IP = "client_ip"
KINDS = (IP, ACCOUNT, CLIENT, CLIENT_IP)

# Stale counters are removed at most this often per process, by whoever records a failure.
_PURGE_EVERY = 600.0


@dataclass(frozen=True)
class ThrottleRule:
    """`free_failures` failures in a row cost nothing; each further one makes the next attempt
    wait `delay_base * 2**k` seconds (at most `delay_max`); at `max_failures` the key is locked
    for `lock_seconds`. The count restarts `window` seconds after the last failure, and after a
    lock has run out."""

    max_failures: int
    lock_seconds: float
    free_failures: int | None = None
    delay_base: float = 1.0
    delay_max: float = 60.0
    window: float = 15 * 60

    @property
    def free(self) -> int:
        return self.max_failures if self.free_failures is None else self.free_failures

    def plan_delay(self, failures: int) -> float:
        """Seconds the attempt after the `failures`-th failure must wait (0: none)."""
        beyond = failures - self.free
        if beyond <= 0 or failures >= self.max_failures:
            return 0.0
        return float(min(self.delay_max, self.delay_base * 2 ** (beyond - 1)))


@dataclass(frozen=True)
class ThrottlePolicy:
    """The rules per kind of key (defaults in docs/login-and-sessions.md).

    The address rule is looser than the account rule per attempt but counts every name tried
    from the address, so spraying many names from one address is slowed after 10 failures and
    stopped after 30, long before it could lock more than a handful of accounts."""

    ip: ThrottleRule = field(
        default_factory=lambda: ThrottleRule(max_failures=30, lock_seconds=900, free_failures=10)
    )
    account: ThrottleRule = field(
        default_factory=lambda: ThrottleRule(max_failures=5, lock_seconds=900)
    )
    client: ThrottleRule = field(
        default_factory=lambda: ThrottleRule(max_failures=10, lock_seconds=900, free_failures=3)
    )
    client_ip: ThrottleRule = field(
        default_factory=lambda: ThrottleRule(max_failures=20, lock_seconds=900, free_failures=5)
    )

    def rule(self, kind: str) -> ThrottleRule:
        rules: Mapping[str, ThrottleRule] = {
            IP: self.ip,
            ACCOUNT: self.account,
            CLIENT: self.client,
            CLIENT_IP: self.client_ip,
        }
        return rules[kind]


class ThrottleKey(NamedTuple):
    """A counter's key. A named tuple rather than a frozen dataclass: every client
    authentication hashes and compares a few of these (the batch's shared read, the
    counters found), and a tuple does that in C where a dataclass calls Python."""

    kind: str
    value: str


@dataclass(frozen=True)
class Counter:
    """One key's failures as stored."""

    kind: str
    value: str
    failures: int
    last_failed_at: float
    locked_until: float | None = None

    @property
    def key(self) -> ThrottleKey:
        return ThrottleKey(self.kind, self.value)


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is refused: the key, whether it is a lock (or a delay), and for how long."""

    key: ThrottleKey
    locked: bool
    retry_after: float


@dataclass(frozen=True)
class Reading:
    """The counters that exist for an attempt's keys, and the refusal they imply (if any)."""

    keys: tuple[ThrottleKey, ...]
    counters: tuple[Counter, ...] = ()
    refusal: Refusal | None = None


def plan_refusal(counter: Counter, rule: ThrottleRule, now: float) -> Refusal | None:
    """Pure: the refusal `counter` implies at `now` under `rule`, or None."""
    if counter.locked_until is not None and counter.locked_until > now:
        return Refusal(counter.key, True, counter.locked_until - now)
    if counter.locked_until is not None or now - counter.last_failed_at > rule.window:
        return None  # the lock ran out or the window passed: the count restarts
    wait_until = counter.last_failed_at + rule.plan_delay(counter.failures)
    if wait_until > now:
        return Refusal(counter.key, False, wait_until - now)
    return None


@functools.lru_cache(maxsize=4096)
def source_of(address: str | None) -> str | None:
    """The throttling key for a client address: the address itself for IPv4, its /64 for IPv6
    (one subscriber usually holds a whole /64), None if it is no address.

    Asked before every client authentication; the `ipaddress` parse was ~3 % of a token
    request, and the callers are few systems at few addresses, hence the memory."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def client_key(client_id: str, source: str | None) -> str:
    """A client id as tried from one source. Never the client id alone: its secret is a long
    random value nobody guesses, and a lock for everyone would let anyone who knows a client
    id stop that system from getting tokens."""
    return f"{client_id}@{source or '-'}"


class ThrottleStore(Protocol):
    def counters(self, keys: Sequence[ThrottleKey]) -> list[Counter]: ...
    def add_failure(self, key: ThrottleKey, *, now: float, window: float) -> Counter: ...
    def lock(self, key: ThrottleKey, *, until: float) -> None: ...
    def clear(self, keys: Sequence[ThrottleKey]) -> int: ...
    def clear_source(self, source: str) -> int: ...
    def active(self, *, now: float, limit: int) -> list[Counter]: ...
    def purge(self, *, before: float, now: float) -> int: ...


class Throttle:
    """Reads, counts and clears failure counters under a `ThrottlePolicy`.

    `counts()` holds this process's tallies (reads that refused, failures recorded, locks
    started, counters cleared) for a metrics endpoint; the shared state is in the store."""

    def __init__(self, store: ThrottleStore, *, policy: ThrottlePolicy, clock: Clock) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._tally: _Tally[str] = _Tally()
        self._lock = threading.Lock()
        self._purged_at = time.monotonic()

    @property
    def policy(self) -> ThrottlePolicy:
        return self._policy

    def read(self, keys: Sequence[ThrottleKey]) -> Reading:
        """One read: the existing counters of `keys` and the longest refusal among them (a lock
        before a delay, keys earlier in `keys` first)."""
        keys = tuple(keys)
        if not keys:
            return Reading(keys)
        return self.assess(keys, self._store.counters(keys))

    def assess(self, keys: tuple[ThrottleKey, ...], counters: Sequence[Counter]) -> Reading:
        """What `read` answers for `keys` when the store holds `counters` for them, judged
        now: for a caller that read them a moment ago (core/client_guard.py `ThrottleBatch`)
        and must still see a delay or a lock run out as the clock moves."""
        if not counters:
            return Reading(keys)  # nothing counted under these keys: nothing to refuse
        found = {c.key: c for c in counters}
        now = self._clock.now()
        refusals = []
        for key in keys:
            counter = found.get(key)
            if counter is not None:
                refusal = plan_refusal(counter, self._policy.rule(key.kind), now)
                if refusal is not None:
                    refusals.append(refusal)
        refusal = None
        if refusals:
            refusal = max(refusals, key=lambda r: (r.locked, r.retry_after))
            self._count(f"refused_{refusal.key.kind}")
        return Reading(keys, tuple(found[k] for k in keys if k in found), refusal)

    def apply_failure(self, reading: Reading) -> list[Counter]:
        """Counts a failure under every key of `reading`; returns the counters that became
        locked by it (each then carries its `locked_until`)."""
        now = self._clock.now()
        locked: list[Counter] = []
        for key in reading.keys:
            rule = self._policy.rule(key.kind)
            counter = self._store.add_failure(key, now=now, window=rule.window)
            self._count(f"failures_{key.kind}")
            if counter.failures >= rule.max_failures and counter.locked_until is None:
                until = now + rule.lock_seconds
                self._store.lock(key, until=until)
                self._count(f"locks_{key.kind}")
                locked.append(
                    Counter(key.kind, key.value, counter.failures, counter.last_failed_at, until)
                )
        self._maybe_purge(now)
        return locked

    def apply_success(self, reading: Reading, *, kinds: Sequence[str]) -> None:
        """Clears the counters of `kinds` that `reading` found; writes nothing if there were
        none. Address counters are never cleared by a success: one good account would
        otherwise let its owner keep guessing at others."""
        if not reading.counters:
            return
        stale = [c.key for c in reading.counters if c.kind in kinds]
        if stale:
            self._store.clear(stale)
            self._count("cleared")

    def apply_clear(self, keys: Sequence[ThrottleKey]) -> int:
        """An admin's unlock: removes the counters of `keys`; returns how many existed."""
        removed = self._store.clear(keys)
        self._count("cleared", removed)
        return removed

    def apply_clear_source(self, address: str) -> int:
        """An admin's unlock of an address (all its sign-in and client-auth counters)."""
        source = source_of(address)
        if source is None:
            return 0
        removed = self._store.clear_source(source)
        self._count("cleared", removed)
        return removed

    def active(self, *, limit: int = 100) -> list[tuple[Counter, Refusal | None]]:
        now = self._clock.now()
        return [
            (c, plan_refusal(c, self._policy.rule(c.kind), now))
            for c in self._store.active(now=now, limit=limit)
            if c.kind in KINDS
        ]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self._tally.items()))

    def _count(self, name: str, amount: int = 1) -> None:
        if amount:
            with self._lock:
                self._tally[name] += amount

    def _maybe_purge(self, now: float) -> None:
        if time.monotonic() - self._purged_at < _PURGE_EVERY:
            return
        self._purged_at = time.monotonic()
        longest = max(max(r.window, r.lock_seconds) for r in map(self._policy.rule, KINDS))
        self._store.purge(before=now - longest, now=now)
