"""Throttling of client authentication (`invalid_client`) at the token, introspection and
revocation endpoints: per client id tried from an address, and per address.

The OAuth layer asks `begin` before it authenticates a client and reports the outcome on the
returned attempt; it never sees the counters. The client id is the one the request claims
(HTTP Basic user name, `client_id` field or the assertion's subject as authlib reads it).

Attempts decided together (one batch of token requests, web/batching.py) may share their read
through a `ThrottleBatch`: see there for what that keeps and what it saves.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote

from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.failure_audit import FailureAudit
from idhub.core.request_budget import CLIENT_REFUSED
from idhub.core.throttle import (
    CLIENT,
    CLIENT_IP,
    Counter,
    Reading,
    Throttle,
    ThrottleKey,
    client_key,
    source_of,
)

MAX_CLIENT_ID = 100
# The stored counters of an attempt's keys, read now (`begin_claimed`'s `read`).
CounterRead = Callable[[tuple[ThrottleKey, ...]], Sequence[Counter]]
_KEYS_REMEMBERED = 4_096


def _throttle_keys(client_id: str | None, source: str | None) -> tuple[ThrottleKey, ...]:
    """The counters an attempt by `client_id` from `source` is judged on: the address, then
    the client id as tried from it."""
    keys = []
    if source is not None:
        keys.append(ThrottleKey(CLIENT_IP, source))
    if client_id:
        keys.append(ThrottleKey(CLIENT, client_key(client_id, source)))
    return tuple(keys)


def claimed_client_id(headers: Mapping[str, str], form: Mapping[str, str]) -> str | None:
    """The client id a request names, from `Authorization: Basic` (RFC 6749 2.3.1: the id is
    form-urlencoded inside) or the `client_id` field; None if it names none."""
    header = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, value = str(header).partition(" ")
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        name = unquote(decoded.partition(":")[0])
        return name[:MAX_CLIENT_ID] or None
    named = form.get("client_id")
    return str(named)[:MAX_CLIENT_ID] if named else None


class ThrottleBatch:
    """The throttle counters of attempts decided together, read once per set of keys.

    A batch of token requests (what queued on a worker's event loop while its last batch ran)
    is decided one request after another on one thread, and its requests mostly come from one
    client at one address: each read the same two counters, one database read per request
    for the same rows. Within a batch the first attempt under a set of keys reads them and the
    others are judged on those counters, each at its own moment (a delay or a lock that runs
    out meanwhile lets it through, as a fresh read would; `Throttle.assess`).

    What keeps this from loosening the throttle: any attempt in the batch that changes a
    counter (a failure counted, or a success that clears the client's counters) drops the
    shared read, so the next attempt reads again and sees the change; a guess is therefore
    never judged on counters from before an earlier guess of its batch. A failure recorded
    by another worker or replica meanwhile is seen by the next batch, which reads afresh,
    as it was seen by the next request before: the read a batch shares is never older than
    the batch itself (at most `web/batching.MAX_BATCH` requests, a few milliseconds of
    signing). Used by one thread, for one batch, then dropped."""

    __slots__ = ("_readings",)

    def __init__(self) -> None:
        self._readings: dict[tuple[ThrottleKey, ...], Reading] = {}

    def read(self, throttle: Throttle, keys: tuple[ThrottleKey, ...]) -> Reading:
        known = self._readings.get(keys)
        if known is not None:
            # No counters under the keys (the usual case): nothing to judge again, the
            # reading is what `assess` would answer at any moment.
            return known if not known.counters else throttle.assess(keys, known.counters)
        reading = throttle.read(keys)
        self._readings[keys] = reading
        return reading

    def forget(self, keys: tuple[ThrottleKey, ...]) -> None:
        """The counters of `keys` changed: the next attempt under any of them reads again."""
        changed = set(keys)
        for shared in [k for k in self._readings if changed.intersection(k)]:
            del self._readings[shared]


class ClientAttempt:
    """One client authentication: refused already, or to be reported as failed or succeeded."""

    def __init__(
        self,
        guard: ClientAuthGuard,
        reading: Reading,
        client_id: str | None,
        ctx: RequestContext | None,
        batch: ThrottleBatch | None = None,
    ) -> None:
        self._guard = guard
        self.reading = reading
        self.client_id = client_id
        self.ctx = ctx
        self.batch = batch

    @property
    def refused(self) -> bool:
        return self.reading.refusal is not None

    @property
    def retry_after(self) -> float:
        return self.reading.refusal.retry_after if self.reading.refusal is not None else 0.0

    def failed(self) -> None:
        self._guard.apply_failure(self)

    def succeeded(self) -> None:
        self._guard.apply_success(self)


class ClientAuthGuard:
    def __init__(
        self, throttle: Throttle, audit: Auditor, failures: FailureAudit | None = None
    ) -> None:
        self._throttle = throttle
        self._audit = audit
        # A refused attempt is answered before any secret is checked, as fast as they come:
        # its event is written within the per-address budget.
        self._failures = failures
        # The counter keys of each (claimed client id, address) seen: a few systems at a few
        # addresses ask all the time, and the keys are a pure function of the two.
        self._keys: dict[tuple[str | None, str | None], tuple[ThrottleKey, ...]] = {}

    def begin(
        self, headers: Mapping[str, str], form: Mapping[str, str], ctx: RequestContext | None
    ) -> ClientAttempt:
        """Reads the counters (one query); a refused attempt is audited here."""
        return self.begin_claimed(claimed_client_id(headers, form), ctx)

    def begin_claimed(
        self,
        client_id: str | None,
        ctx: RequestContext | None,
        *,
        batch: ThrottleBatch | None = None,
        read: CounterRead | None = None,
    ) -> ClientAttempt:
        """`begin` for a caller that already decoded the client id the request claims (the
        lean paths, from the Basic header they parsed); with `batch`, the read is shared by
        the batch's attempts under the same keys (`ThrottleBatch`). With `read` (and no
        batch), the counters come from it instead of the throttle's own read: for a caller
        whose one query also fetches something else it needs (the lean introspection, the
        token's revocation); it must answer what the throttle's store would, read now."""
        client_id = client_id[:MAX_CLIENT_ID] if client_id else None
        source = source_of(ctx.client_ip if ctx is not None else None)
        wanted = self._keys.get((client_id, source))
        if wanted is None:
            wanted = _throttle_keys(client_id, source)
            if len(self._keys) >= _KEYS_REMEMBERED:
                self._keys.clear()  # strangers' ids must not grow memory without bound
            self._keys[(client_id, source)] = wanted
        if batch is not None:
            reading = batch.read(self._throttle, wanted)
        elif read is not None:
            reading = self._throttle.assess(wanted, read(wanted))
        else:
            reading = self._throttle.read(wanted)
        attempt = ClientAttempt(self, reading, client_id, ctx, batch)
        refusal = attempt.reading.refusal
        if refusal is not None:
            event = PendingEvent(
                EventType.CLIENT_AUTH_THROTTLED,
                actor=Actor("client", client_id),
                outcome="failure",
                details={
                    "scope": refusal.key.kind,
                    "locked": refusal.locked,
                    "retry_after": round(refusal.retry_after),
                },
                ctx=ctx,
            )
            if self._failures is not None:
                self._failures.record(CLIENT_REFUSED, event)
            else:
                self._audit.record_many([event])
        return attempt

    def apply_failure(self, attempt: ClientAttempt) -> None:
        if attempt.batch is not None:
            attempt.batch.forget(attempt.reading.keys)
        for counter in self._throttle.apply_failure(attempt.reading):
            self._audit.record(
                EventType.CLIENT_AUTH_LOCKOUT,
                actor=Actor("client", attempt.client_id),
                outcome="failure",
                details={
                    "scope": counter.kind,
                    "failures": counter.failures,
                    "locked_until": counter.locked_until,
                },
                ctx=attempt.ctx,
            )

    def apply_success(self, attempt: ClientAttempt) -> None:
        if not attempt.reading.counters:
            return  # nothing to clear (the usual case)
        cleared = [c.key for c in attempt.reading.counters if c.kind == CLIENT]
        if cleared and attempt.batch is not None:
            attempt.batch.forget(tuple(cleared))
        self._throttle.apply_success(attempt.reading, kinds=(CLIENT,))
