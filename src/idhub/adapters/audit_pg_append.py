"""The PostgreSQL append path: the chain lock, then the batch, two round trips per batch.

Every append holds the advisory lock (`pg_advisory_xact_lock`) from before the tail is known
until its commit is flushed, so concurrent writers - threads, worker processes, replicas -
still form one chain. A process's group-commit leader (adapters/audit_store.py
`_lead_locked`) keeps one connection (`HeldAppender`) and on it first takes the lock (`BEGIN;
SELECT pg_advisory_xact_lock(...)`, `lock_chain`), and only once it holds it collects the
queue as its batch and sends it with its COMMIT (`idhub_audit_append(...); COMMIT`,
`append_locked`, a statement prepared once per connection, sent with its COMMIT in one
pipeline; migrations 0019, 0020): the function reads the tail, links and inserts the
batch behind it, and psycopg returns only after COMMIT's answer (an error raised at commit
reaches the caller), so nothing is answered before its event is durable. The canonical form
of each event is still built in Python, outside the lock, and each caller encodes its own
events as JSON before it queues; the server only adds `[seq,` in front and hashes
(docs/audit.md).

Why the lock comes first: with the batch fixed before the lock wait (0019 and 0020 as first
used, one autocommit statement), everything that queued while another process held the lock
- its whole turn, flush included - waited for a turn of its own, so two workers made
half-size batches and twice the flushes (docs/performance.md, branch `pgflush`). And a
lock wait interrupted on the client left its statement queued on the server, where it was
committed once the lock came free although its caller had been told it failed; now the
batch is only sent once the lock is held.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from idhub.core.audit_chain import canonical_bytes, chain_hash

ADVISORY_LOCK_KEY = 0x1D4B_A0D1
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_TAIL = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
# The batch travels as one JSON text (migration 0019 reads it back): psycopg dumps a list
# parameter in Python, element by element (eleven arrays cost ~300 µs of CPU per append,
# measured), while the C JSON encoder writes the whole batch in a few.
_BATCH = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def chain_rows(events: Sequence[Any], seq: int, prev: str) -> list[tuple[Any, ...]]:
    """Places prepared events (`.values`, `.tail`) after (seq - 1, prev) in the chain."""
    rows = []
    for event in events:
        digest = chain_hash(prev, canonical_bytes(seq, event.tail))
        rows.append((seq, *event.values, prev, digest))
        seq, prev = seq + 1, digest
    return rows


def lock_and_read_tail(raw: Any) -> tuple[int, str] | None:
    """Takes the append lock inside the transaction open on psycopg connection `raw` and
    reads the tail, in one round trip: the tail query starts (and takes its READ COMMITTED
    snapshot) only once the lock is held, so it sees every committed append. None for an
    empty table. For units of work, whose events commit with their own changes."""
    with raw.pipeline() as pipeline, raw.cursor() as lock, raw.cursor() as tail:
        lock.execute(_LOCK, (ADVISORY_LOCK_KEY,))
        tail.execute(_TAIL)
        pipeline.sync()
        last = tail.fetchone()
    return (int(last[0]), str(last[1])) if last is not None else None


def batch_part(events: Sequence[Any]) -> str:
    """Prepared events (`.values`, `.tail`) as their part of the function's JSON array (the
    elements, without the brackets). Each caller encodes its own before it queues, so the
    leader, holding the chain lock, only joins the parts."""
    return _BATCH.encode([[*event.values, event.tail] for event in events])[1:-1]
