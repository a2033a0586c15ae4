"""PostgreSQL: `idhub_audit_append`, a server-side append of a batch of audit events, so an
append is one round trip whatever other writers did since (adapters/audit_pg_append.py)

The client still builds every event's canonical form (everything after `seq`, the "tail")
and sends the batch as one JSON array of [columns..., tail] per event; the function takes the
chain lock, reads the tail of the chain, and links the batch behind it
with the same hash as `core/audit_chain.py`: SHA-256 of the previous hash's ASCII followed by
the UTF-8 of `[seq,` + tail. The canonical form does not change; the verifier checks rows
written here like any other. SQLite needs nothing: its appends are local calls.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 21:15:00
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# The advisory lock key every appender takes (adapters/audit_pg_append.py ADVISORY_LOCK_KEY,
# 0x1D4BA0D1): units of work and archiving take it from the client, this function on the
# server, so all of them queue on the same lock. A migration is a snapshot: the number is
# written out, and a test checks it against the adapter's constant.
_CREATE = """
CREATE FUNCTION idhub_audit_append(p_events json, OUT last_seq bigint, OUT last_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    v_event json;
    v_hash text;
BEGIN
    -- Held until the transaction ends (after its commit is flushed), so the next appender
    -- reads a tail that is committed.
    PERFORM pg_advisory_xact_lock(491495633);
    SELECT seq, hash INTO last_seq, last_hash FROM audit_events ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        -- An empty live chain continues after the archive's anchor, or from genesis.
        SELECT first_seq - 1, prev_hash INTO last_seq, last_hash
            FROM audit_anchor ORDER BY id LIMIT 1;
        IF NOT FOUND THEN
            last_seq := 0;
            last_hash := repeat('0', 64);
        END IF;
    END IF;
    -- Each event: [ts, event_type, actor_type, actor_id, target, outcome, client_ip,
    -- user_agent, request_id, details, canonical tail]; ts keeps its shortest round-trip
    -- decimal, so the double stored is the client's.
    FOR v_event IN
        SELECT e FROM json_array_elements(p_events) WITH ORDINALITY AS t(e, n) ORDER BY n
    LOOP
        last_seq := last_seq + 1;
        v_hash := encode(
            sha256(convert_to(last_hash || '[' || last_seq::text || ',' || (v_event->>10),
                              'UTF8')),
            'hex');
        INSERT INTO audit_events (seq, ts, event_type, actor_type, actor_id, target, outcome,
                                  client_ip, user_agent, request_id, details, prev_hash, hash)
        VALUES (last_seq, (v_event->>0)::double precision, v_event->>1, v_event->>2,
                v_event->>3, v_event->>4, v_event->>5, v_event->>6, v_event->>7, v_event->>8,
                v_event->>9, last_hash, v_hash);
        last_hash := v_hash;
    END LOOP;
END
$$
"""

_DROP = "DROP FUNCTION idhub_audit_append(json)"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
