"""The durable audit write a decision taken on the event loop still owes, batched: the denials
(and audited allows) of the checks that arrive while a write runs go to the threadpool in ONE
hop and are appended in one `record_events` call.

A denial's answer waits for its own records to be committed, as before; only the hand-over to
a worker thread is shared. Under `wrk -c32` with one denial in ten, each denial paid a thread
hop of its own and its thread fought the event loop for the GIL (docs/performance.md,
Authorization: 2026-12-01 evening). The audit store's group commit already shared the
transaction; this shares the hop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from starlette.responses import Response

from idhub.core.audit import PendingEvent
from idhub.core.authz.decisions import PolicyAnswers


@dataclass(frozen=True)
class ToRecord:
    """A decided check: the events that must be durable before `response` is sent."""

    answers: PolicyAnswers
    events: Sequence[PendingEvent]
    response: Response


def record_all(pending: Sequence[ToRecord]) -> list[Response | Exception]:
    """Each check's answer once its events are written, or the error that stopped them (runs
    in a worker thread: it blocks on the database). Checks decided against one engine (one
    policy version, served by one decision source, so their records go to the same place) are
    written together; if that write fails (it rolled back as a whole), they are written one by
    one, so one check's failure is its own."""
    answered: list[Response | Exception] = []
    # Each check has answers of its own (`Decisions.current()` per request); the engine is
    # what they share.
    for _, run in groupby(pending, key=lambda p: id(p.answers.engine)):
        together = list(run)
        try:
            together[0].answers.record_events([e for p in together for e in p.events])
        except Exception:
            answered.extend(_alone(p) for p in together)
        else:
            answered.extend(p.response for p in together)
    return answered


def _alone(pending: ToRecord) -> Response | Exception:
    try:
        pending.answers.record_events(pending.events)
    except Exception as exc:
        return exc
    return pending.response
