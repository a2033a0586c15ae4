"""Units of work: a state change and its audit events commit together or not at all.

Core code that changes state and records it asks for one transaction:

    with self._uow.atomic() as tx:
        self._store.grant(...)                # joins the transaction
        tx.record(EventType.CONSENT_GRANTED, ...)

Every store call made inside the block, on the same thread, joins the one transaction; the
audit events recorded through `tx` (or through the `Auditor` itself, which joins an open unit
of work rather than waiting for its write lock) are appended to the chain as the last step
before COMMIT. If the block raises, or the append fails, everything rolls back: no change
stands without its event and no event claims a change that did not happen. A decision that
must stand *and* answer with an error (a reused refresh token revokes its family, then the
request is refused) commits first and raises after the block.

Nested `atomic()` blocks join the outermost one. The port is free of any storage library;
`adapters/unit_of_work.py` implements it on the SQL engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from idhub.core.audit import Actor, EventType, Outcome, PendingEvent, RequestContext


class Transaction(Protocol):
    """An open unit of work; `record` / `record_many` queue events that commit with it."""

    def record(
        self,
        event_type: EventType,
        *,
        actor: Actor,
        target: str | None = None,
        outcome: Outcome = "success",
        details: dict[str, Any] | None = None,
        ctx: RequestContext | None = None,
    ) -> None: ...

    def record_many(self, events: Sequence[PendingEvent]) -> None: ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Runs `callback` once the transaction committed (wake a worker, fill a cache);
        never when it rolled back."""
        ...


class UnitOfWork(Protocol):
    def atomic(self) -> AbstractContextManager[Transaction]:
        """One transaction for the block; see the module docstring."""
        ...

    def nested(self) -> AbstractContextManager[None]:
        """Inside an open `atomic()` block on this thread: a part of it that rolls back alone
        when its block raises, with the events and after-commit callbacks queued inside it
        (several grants sharing one unit, oidc/grant_batch.py). `StorageError` when no unit
        is open."""
        ...
