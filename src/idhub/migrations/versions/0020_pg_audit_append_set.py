"""PostgreSQL: `idhub_audit_append` inserts a batch with one INSERT ... SELECT instead of one
INSERT per event (adapters/audit_pg_append.py)

The function's contract is unchanged: same argument (one JSON array of [columns..., tail] per
event), same lock, same tail and anchor rules, same hash (SHA-256 of the previous hash's ASCII
followed by the UTF-8 of `[seq,` + tail), same result. Only the per-event work moves: the hash
chain is still a loop (each link needs the one before), but it runs over a text array, and the
rows then go in with a single statement. Each INSERT from PL/pgSQL is a statement of its own
(executor start-up, index and trigger bookkeeping) run while the chain lock is held, which
every other appender waits behind (docs/performance.md, 2026-12-02 evening, branch `pgcc2`).

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# The advisory lock key is adapters/audit_pg_append.py's ADVISORY_LOCK_KEY (0x1D4BA0D1),
# written out because a migration is a snapshot; a test checks the two agree.
_SET_BASED = """
CREATE OR REPLACE FUNCTION idhub_audit_append(p_events json, OUT last_seq bigint,
                                              OUT last_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    v_events jsonb := p_events::jsonb;
    v_tails text[];
    v_hashes text[];
    v_count int;
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
    -- Element 10 of each event is its canonical tail; the hashes are linked in batch order.
    SELECT array_agg(e->>10 ORDER BY n) INTO v_tails
        FROM jsonb_array_elements(v_events) WITH ORDINALITY AS t(e, n);
    v_count := coalesce(array_length(v_tails, 1), 0);
    IF v_count = 0 THEN
        RETURN;
    END IF;
    v_hashes := ARRAY[last_hash];  -- v_hashes[i] is the hash event i links to
    FOR i IN 1..v_count LOOP
        v_hashes[i + 1] := encode(
            sha256(convert_to(v_hashes[i] || '[' || (last_seq + i)::text || ',' || v_tails[i],
                              'UTF8')),
            'hex');
    END LOOP;
    -- Each event: [ts, event_type, actor_type, actor_id, target, outcome, client_ip,
    -- user_agent, request_id, details, canonical tail]; ts keeps its shortest round-trip
    -- decimal, so the double stored is the client's.
    INSERT INTO audit_events (seq, ts, event_type, actor_type, actor_id, target, outcome,
                              client_ip, user_agent, request_id, details, prev_hash, hash)
    SELECT last_seq + n, (e->>0)::double precision, e->>1, e->>2, e->>3, e->>4, e->>5,
           e->>6, e->>7, e->>8, e->>9, v_hashes[n], v_hashes[n + 1]
        FROM jsonb_array_elements(v_events) WITH ORDINALITY AS t(e, n)
        ORDER BY n;
    last_seq := last_seq + v_count;
    last_hash := v_hashes[v_count + 1];
END
$$
"""

# 0019's body, put back on downgrade.
_ROW_BY_ROW = """
CREATE OR REPLACE FUNCTION idhub_audit_append(p_events json, OUT last_seq bigint,
                                              OUT last_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    v_event json;
    v_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock(491495633);
    SELECT seq, hash INTO last_seq, last_hash FROM audit_events ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        SELECT first_seq - 1, prev_hash INTO last_seq, last_hash
            FROM audit_anchor ORDER BY id LIMIT 1;
        IF NOT FOUND THEN
            last_seq := 0;
            last_hash := repeat('0', 64);
        END IF;
    END IF;
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


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_SET_BASED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_ROW_BY_ROW)
