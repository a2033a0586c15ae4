"""The chain: the canonical form of an event, its hash, and the verifier that walks a
stored chain and names the first broken link.

The canonical form (version 1, documented in docs/audit.md so an outside tool can check it):
the UTF-8 bytes of the compact JSON array
`[seq, ts, event_type, actor_type, actor_id, target, outcome, client_ip, user_agent,
request_id, details]` where `ts` is the string `repr(float)` of the epoch seconds and
`details` is the object serialised with sorted keys and no spaces. The store keeps `details`
in exactly that text, so verification hashes the stored bytes without re-parsing them.
`hash = SHA-256(prev_hash || canonical)`; the first event's prev_hash is 64 zeros.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from idhub.core.audit import AuditEvent

GENESIS_HASH = "0" * 64
CANONICAL_VERSION = 1


# `json.dumps` with these options builds a new encoder on every call; one built once gives
# the same text (an encoder keeps no state between calls, so threads may share it).
_DETAILS_ENCODER = json.JSONEncoder(
    sort_keys=True,
    ensure_ascii=False,
    separators=(",", ":"),
    allow_nan=False,
    default=str,
)


def canonical_details(details: dict[str, Any]) -> str:
    """The stored and hashed text of `details` (raises ValueError for NaN/Infinity)."""
    return _DETAILS_ENCODER.encode(details)


# `_DETAILS_ENCODER`'s C encoder, made once, without the table of objects being encoded
# that `JSONEncoder.encode` builds on every call to catch reference cycles: for a dict
# whose values are no dicts or lists there can be none. The same function with the same
# options, so the same text (tested against `canonical_details`).
_MAKE_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)  # None without the C part
# Arguments: markers (None: no cycle check), default, string encoder, indent, separators,
# sort_keys, skipkeys, allow_nan - `_DETAILS_ENCODER`'s options.
_FLAT_ENCODER: Any = (
    _MAKE_ENCODER(None, str, json.encoder.encode_basestring, None, ":", ",", True, False, False)
    if _MAKE_ENCODER is not None
    else None
)


def canonical_flat_details(details: dict[str, Any]) -> str:
    """`canonical_details` of a dict none of whose values is a dict, list or tuple (the
    caller knows it: core/audit.py `scrub_flat`). Raises ValueError for NaN/Infinity and
    TypeError for keys JSON cannot hold, as `canonical_details` does."""
    if _FLAT_ENCODER is None:
        return _DETAILS_ENCODER.encode(details)
    return "".join(_FLAT_ENCODER(details, 0))


def canonical_tail(
    *,
    ts: float,
    event_type: str,
    actor_type: str,
    actor_id: str | None,
    target: str | None,
    outcome: str,
    client_ip: str | None,
    user_agent: str | None,
    request_id: str | None,
    details_json: str,
) -> str:
    """Everything of the canonical form after `seq`, so the slow part can be built before
    the append lock is taken; `canonical_bytes` adds the sequence number in front."""
    fields = (event_type, actor_type, actor_id, target, outcome, client_ip, user_agent, request_id)
    return chain_tail(ts, fields, details_json)


# json.dumps(..., ensure_ascii=False) encodes strings with exactly this function; calling it
# per field is twice as fast as dumping a list, which matters when verifying millions.
_encode = json.encoder.encode_basestring


def chain_tail(ts: float, fields: Sequence[str | None], details_json: str) -> str:
    """`canonical_tail` with the eight text fields in canonical order (event_type ..
    request_id): for the audit store, which has them in a tuple already."""
    parts = ",".join([_encode(v) if v is not None else "null" for v in fields])
    return f'"{float(ts)!r}",{parts},{details_json}]'


def event_tail(
    ts: float,
    head: tuple[str, str, str | None, str | None, str],
    client_ip: str | None,
    user_agent: str | None,
    request_id: str | None,
    details_json: str,
) -> str:
    """`chain_tail` with the first five fields as `head` (event_type, actor_type, actor_id,
    target, outcome), whose JSON text is remembered (`_HEADS`): the same text.

    Every event's tail escapes its eight fields; a client's token events, a user's sign-ins,
    repeat the same five and differ only in the request's three. Escaping and joining the
    five in a list comprehension was ~5,500 of the ~50,000 instructions of a token event's
    preparation. The remembered text is a pure function of the five strings, so keeping it
    changes nothing but the work."""
    text = _HEADS.get(head)
    if text is None:
        text = ",".join([_encode(v) if v is not None else "null" for v in head])
        if len(_HEADS) >= _HEADS_KEPT:
            _HEADS.clear()  # many users' ids must not grow memory without bound
        _HEADS[head] = text
    ip = _encode(client_ip) if client_ip is not None else "null"
    agent = _encode(user_agent) if user_agent is not None else "null"
    rid = _encode(request_id) if request_id is not None else "null"
    return f'"{float(ts)!r}",{text},{ip},{agent},{rid},{details_json}]'


# The JSON text of each event's first five fields (`event_tail`), by the five values: two
# tuples of strings (or None) that compare equal hold the same characters, which is all
# `encode_basestring` reads, so they have the same text.
_HEADS: dict[tuple[str, str, str | None, str | None, str], str] = {}
_HEADS_KEPT = 4096


def canonical_bytes(seq: int, tail: str) -> bytes:
    return f"[{seq},{tail}".encode()


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical)
    return digest.hexdigest()


# ------------------------------------------------------------------ verification

# A stored row in the order the verifier reads it: the canonical fields with `details` as
# its stored text, then prev_hash and hash.
StoredRow = Sequence[Any]


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    kind: Literal["missing", "altered", "unlinked"]
    message: str


@dataclass(frozen=True)
class VerifyReport:
    checked: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    problem: ChainBreak | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class ChainVerifier:
    """Walks events in `seq` order (fed in chunks) and stops at the first broken link.

    Three checks per event, most specific first: its seq follows the previous one (else
    events were deleted), its content hashes to its stored hash (else it was edited, or
    moved, since `seq` is part of the hashed content), and its `prev_hash` is the previous
    event's hash (else something was inserted, deleted and renumbered, or reordered).
    """

    def __init__(self, *, first_seq: int = 1, prev_hash: str = GENESIS_HASH) -> None:
        self._expected_seq = first_seq
        self._prev = prev_hash
        self.first_seq: int | None = None
        self.checked = 0
        self.problem: ChainBreak | None = None

    def feed(self, rows: Iterable[StoredRow]) -> bool:
        """Checks rows; False once a break was found (later rows are ignored)."""
        if self.problem is not None:
            return False
        expected, prev = self._expected_seq, self._prev
        sha256, encode = hashlib.sha256, _encode
        checked = 0
        try:
            for row in rows:
                seq = row[0]
                if seq != expected:
                    self.problem = _gap(expected, seq)
                    return False
                fields = ",".join([encode(v) if v is not None else "null" for v in row[2:10]])
                canonical = f'[{seq},"{float(row[1])!r}",{fields},{row[10]}]'.encode()
                digest = sha256(row[11].encode("ascii"))
                digest.update(canonical)
                if digest.hexdigest() != row[12]:
                    self.problem = ChainBreak(
                        seq,
                        "altered",
                        f"event {seq} does not match its hash: a field was edited "
                        "or the event was moved to this position",
                    )
                    return False
                if row[11] != prev:
                    self.problem = ChainBreak(
                        seq,
                        "unlinked",
                        f"event {seq} does not link to the event before it (its prev_hash "
                        f"{row[11][:12]}... is not {prev[:12]}...): an event was inserted, "
                        "deleted or reordered before it",
                    )
                    return False
                if self.first_seq is None:
                    self.first_seq = seq
                prev = row[12]
                expected = seq + 1
                checked += 1
        finally:
            self.checked += checked
            self._expected_seq, self._prev = expected, prev
        return True

    def report(self) -> VerifyReport:
        last = self._expected_seq - 1 if self.checked else None
        return VerifyReport(
            checked=self.checked,
            first_seq=self.first_seq,
            last_seq=last,
            head_hash=self._prev,
            problem=self.problem,
        )

    @property
    def next_seq(self) -> int:
        return self._expected_seq

    @property
    def head_hash(self) -> str:
        return self._prev


def _gap(expected: int, seq: int) -> ChainBreak:
    if seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
        return ChainBreak(
            seq, "missing", f"event(s) {missing} are missing before event {seq}: deleted"
        )
    return ChainBreak(seq, "unlinked", f"event {seq} appears where {expected} was expected")


def event_row(event: AuditEvent) -> tuple[Any, ...]:
    """An `AuditEvent` (from an archive line) as the row the verifier reads."""
    return (
        event.seq, event.ts, event.event_type, event.actor_type, event.actor_id, event.target,
        event.outcome, event.client_ip, event.user_agent, event.request_id,
        canonical_details(event.details), event.prev_hash, event.hash,
    )  # fmt: skip
