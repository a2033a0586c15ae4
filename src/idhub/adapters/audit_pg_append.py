"""The PostgreSQL append path: one round trip per batch, whatever other writers did.

Every append holds the advisory lock (`pg_advisory_xact_lock`) from before the tail is known
until its commit is flushed, so concurrent writers - threads, worker processes, replicas -
still form one chain. A batch of events (everything a process's group commit collected) is
one statement, `SELECT * FROM idhub_audit_append(...)` (migrations 0019, 0020), run in autocommit:
the function takes the lock, reads the tail, and links and inserts the batch behind it; the
statement's own transaction commits before the server answers, and psycopg returns only
after that answer (an error raised at commit reaches the caller), so nothing is answered
before its event is durable. The canonical form of each event is still built here, outside
the lock; the server only adds `[seq,` in front and hashes (docs/audit.md).

Before, the client took the lock and guessed the tail from what it wrote last: one round trip
when it guessed right, three when another process had appended since, which with two
workers appending to one chain was about half the time, and while the lock was held across
those round trips every other writer waited for this process to be scheduled again.
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
_APPEND = "SELECT last_seq, last_hash FROM idhub_audit_append(%s::json)"
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


def append_committed(raw: Any, events: Sequence[Any]) -> tuple[int, str]:
    """Appends `events` on psycopg connection `raw` (idle: no transaction open) and returns
    once they are committed, with the (seq, hash) of the last one."""
    batch = _BATCH.encode([[*event.values, event.tail] for event in events])
    # Autocommit for this one statement: BEGIN and COMMIT would be two more messages to
    # send and two more results to read, for the same single transaction.
    raw.autocommit = True
    with raw.cursor() as cursor:
        cursor.execute(_APPEND, (batch,))
        last = cursor.fetchone()
    raw.autocommit = False
    return int(last[0]), str(last[1])
