"""Code exchanges and refreshes that arrived together share one unit of work.

On SQLite the token endpoint hands over in one batch what queued while the last batch ran
(web/batching.py, `Provider.token_many`). Each code exchange or refresh in it still does all
of its own work (client authentication, the code or family lookup, the signatures) on its
own, outside any lock; only its *write section* - using up the code or rotating the refresh
token, the records it starts and its audit event - is deferred, and the batch's write
sections then run one after the other in ONE unit of work: one writer turn, one write-lock
statement, one append of all their events (one chain-tail read) and one commit. Alone, each
paid all of that (profiled: about a third of a code exchange's CPU), and every other writer
waited through each of those turns.

What does not change:

- No token leaves before its event is committed: the answers are built only once the shared
  unit has committed; when it fails, every member of the batch gets the same refusal (503),
  as the batch's client-credentials tokens do when their shared append fails.
- Each member decides exactly as alone: its write section runs in a savepoint of the shared
  unit (`UnitOfWork.nested`), so a member that raises inside it (a user disabled since the
  lookup) rolls back its own changes and events and no one else's; a member whose decision
  must stand and still refuse (a reused code or refresh token revokes its grant) keeps its
  changes and answers with its error. A second use of one code or refresh token in the same
  batch sees the first one's uncommitted change (one connection), so it is a replay.
- A batch of one (always on PostgreSQL, whose units share commits in `unit_group.py`) runs
  as before, with no savepoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error

from idhub.oidc.minter import TokenMinter

# The write section of one grant: runs inside a transaction, returns the token endpoint's
# JSON body or raises the grant's `OAuth2Error`.
Section = Callable[[], dict[str, Any]]

# "collecting": grants defer their write sections; "running": a shared unit is open and each
# section runs in a savepoint of it.
_state: ContextVar[str | None] = ContextVar("idhub_grant_batch", default=None)


def deferring() -> bool:
    """Whether the grant being answered should leave its write section to the batch."""
    return _state.get() == "collecting"


def sharing_unit() -> bool:
    """Whether a write section runs inside a batch's shared unit of work (so in a savepoint)."""
    return _state.get() == "running"


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Grants answered inside this block defer their write sections (`deferring`)."""
    token = _state.set("collecting")
    try:
        yield
    finally:
        _state.reset(token)


def run_sections(
    minter: TokenMinter, sections: Sequence[Section]
) -> list[dict[str, Any] | OAuth2Error]:
    """Runs the deferred write sections in order in one unit of work and returns, once it has
    committed, each one's body or `OAuth2Error`. Raises what the unit raises (the minter's
    `TemporarilyUnavailable` when the events cannot be appended, `StorageError`): then
    nothing of any section stands and no member may get a token."""
    results: list[dict[str, Any] | OAuth2Error] = []
    token = _state.set("running")
    try:
        with minter.atomic():
            for section in sections:
                try:
                    results.append(section())
                except OAuth2Error as exc:
                    results.append(exc)
    finally:
        _state.reset(token)
    return results
