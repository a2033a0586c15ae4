"""Throttling of client authentication (`invalid_client`) at the token, introspection and
revocation endpoints: per client id tried from an address, and per address.

The OAuth layer asks `begin` before it authenticates a client and reports the outcome on the
returned attempt; it never sees the counters. The client id is the one the request claims
(HTTP Basic user name, `client_id` field or the assertion's subject as authlib reads it).
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
    Reading,
    Snapshot,
    Throttle,
    ThrottleKey,
    client_key,
    source_of,
)

MAX_CLIENT_ID = 100


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


class ClientAttempt:
    """One client authentication: refused already, or to be reported as failed or succeeded."""

    def __init__(
        self,
        guard: ClientAuthGuard,
        reading: Reading,
        client_id: str | None,
        ctx: RequestContext | None,
    ) -> None:
        self._guard = guard
        self.reading = reading
        self.client_id = client_id
        self.ctx = ctx
        # Told when this attempt writes counters (see `BatchAttempts`).
        self.on_write: Callable[[], None] | None = None

    @property
    def refused(self) -> bool:
        return self.reading.refusal is not None

    @property
    def retry_after(self) -> float:
        return self.reading.refusal.retry_after if self.reading.refusal is not None else 0.0

    def failed(self) -> None:
        if self.on_write is not None:
            self.on_write()
        self._guard.apply_failure(self)

    def succeeded(self) -> None:
        if self.on_write is not None and any(c.kind == CLIENT for c in self.reading.counters):
            self.on_write()  # a success clears the client counters it found
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

    def begin(
        self, headers: Mapping[str, str], form: Mapping[str, str], ctx: RequestContext | None
    ) -> ClientAttempt:
        """Reads the counters (one query); a refused attempt is audited here."""
        client_id, keys = _claim(headers, form, ctx)
        return self.opened(ClientAttempt(self, self._throttle.read(keys), client_id, ctx))

    def begin_batch(self, requests: Sequence[AttemptRequest]) -> BatchAttempts:
        """The attempts of requests handled one after another, their counters read now in
        one query for all of them (`BatchAttempts`)."""
        claims = [_claim(*request) for request in requests]
        snapshot = self._throttle.snapshot([key for _, keys in claims for key in keys])
        return BatchAttempts(self, requests, claims, snapshot)

    def reading_from(self, snapshot: Snapshot, keys: Sequence[ThrottleKey]) -> Reading:
        return self._throttle.read_from(snapshot, keys)

    def opened(self, attempt: ClientAttempt) -> ClientAttempt:
        """`attempt`, its refusal (if any) audited."""
        refusal = attempt.reading.refusal
        if refusal is not None:
            event = PendingEvent(
                EventType.CLIENT_AUTH_THROTTLED,
                actor=Actor("client", attempt.client_id),
                outcome="failure",
                details={
                    "scope": refusal.key.kind,
                    "locked": refusal.locked,
                    "retry_after": round(refusal.retry_after),
                },
                ctx=attempt.ctx,
            )
            if self._failures is not None:
                self._failures.record(CLIENT_REFUSED, event)
            else:
                self._audit.record_many([event])
        return attempt

    def apply_failure(self, attempt: ClientAttempt) -> None:
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
        self._throttle.apply_success(attempt.reading, kinds=(CLIENT,))


# What an attempt is begun from: the request's headers, its form and its context.
AttemptRequest = tuple[Mapping[str, str], Mapping[str, str], RequestContext | None]


def _claim(
    headers: Mapping[str, str], form: Mapping[str, str], ctx: RequestContext | None
) -> tuple[str | None, list[ThrottleKey]]:
    """The client id a request claims and the throttle keys its attempt is counted under."""
    client_id = claimed_client_id(headers, form)
    source = source_of(ctx.client_ip if ctx is not None else None)
    keys = []
    if source is not None:
        keys.append(ThrottleKey(CLIENT_IP, source))
    if client_id:
        keys.append(ThrottleKey(CLIENT, client_key(client_id, source)))
    return client_id, keys


class BatchAttempts:
    """The client authentications of a batch of requests that are decided one after another
    (the token endpoint's batches), with their counters read in one query up front instead of
    one query each.

    `begin(i)` is what `ClientAuthGuard.begin` of request i would return at that point of the
    batch: the reading comes from the batch's snapshot only as long as no earlier attempt of
    the batch wrote counters (a failure counted, counters cleared by a success); after the
    first write every later request reads the database itself, as it would have alone, so a
    failure (or a lock) earlier in the batch is seen by the requests after it. Writes of other
    processes between the snapshot and an attempt are the same race as between two requests
    running side by side, each reading before the other's failure is counted."""

    def __init__(
        self,
        guard: ClientAuthGuard,
        requests: Sequence[AttemptRequest],
        claims: list[tuple[str | None, list[ThrottleKey]]],
        snapshot: Snapshot,
    ) -> None:
        self._guard = guard
        self._requests = requests
        self._claims = claims
        self._snapshot: Snapshot | None = snapshot

    def begin(self, index: int) -> ClientAttempt:
        """The attempt of request `index`; its refusal (if any) is audited here."""
        if self._snapshot is None:
            attempt = self._guard.begin(*self._requests[index])
        else:
            client_id, keys = self._claims[index]
            reading = self._guard.reading_from(self._snapshot, keys)
            attempt = self._guard.opened(
                ClientAttempt(self._guard, reading, client_id, self._requests[index][2])
            )
        attempt.on_write = self._written
        return attempt

    def _written(self) -> None:
        self._snapshot = None
