"""The audit vocabulary and the port every part records through.

Each event is hash-chained (see `idhub.core.audit_chain`): an edited, deleted, inserted or
reordered event breaks the chain at a point the verifier can name. The closed list of event
types lives here; adding one is a deliberate change. Secrets never belong in an event:
`scrub_details` is the last line of defence when a caller forgets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring as _encode_text
from typing import Any, Literal, Protocol

from idhub.core.audit_chain import (
    GENESIS_HASH,
    canonical_bytes,
    canonical_details,
    canonical_tail,
    chain_hash,
)
from idhub.errors import InvalidInput

ActorType = Literal["user", "client", "admin", "system"]
Outcome = Literal["success", "failure", "denied", "error"]
ACTOR_TYPES: tuple[str, ...] = ("user", "client", "admin", "system")
OUTCOMES: tuple[str, ...] = ("success", "failure", "denied", "error")


class EventType(StrEnum):
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    # A browser sent to an upstream provider (DingTalk, WeCom, OIDC) to sign in there.
    LOGIN_UPSTREAM_STARTED = "login.upstream_started"
    MFA_SUCCEEDED = "mfa.succeeded"
    MFA_FAILED = "mfa.failed"
    MFA_ENROLLED = "mfa.enrolled"
    MFA_REMOVED = "mfa.removed"
    MFA_RESET = "mfa.reset"
    MFA_REQUIREMENT_SET = "mfa.requirement_set"
    MFA_RECOVERY_CODES_ISSUED = "mfa.recovery_codes_issued"
    MFA_RECOVERY_CODE_USED = "mfa.recovery_code_used"
    MFA_DEVICE_REMEMBERED = "mfa.device_remembered"
    MFA_DEVICE_REVOKED = "mfa.device_revoked"
    CONSENT_GRANTED = "consent.granted"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REFRESHED = "token.refreshed"
    REFRESH_REUSE_DETECTED = "token.refresh_reuse_detected"
    TOKEN_EXCHANGED = "token.exchanged"
    TOKEN_INTROSPECTED_INACTIVE = "token.introspected_inactive"
    TOKEN_REVOKED = "token.revoked"
    TOKEN_REQUEST_FAILED = "token.request_failed"
    LOGOUT = "session.logout"
    SESSION_REVOKED = "session.revoked"
    BACKCHANNEL_DELIVERED = "logout.backchannel_delivered"
    BACKCHANNEL_FAILED = "logout.backchannel_failed"
    CLIENT_CREATED = "client.created"
    CLIENT_UPDATED = "client.updated"
    CLIENT_SECRET_ROTATED = "client.secret_rotated"
    CLIENT_REMOVED = "client.removed"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    USER_PASSWORD_SET = "user.password_set"
    KEY_CREATED = "key.created"
    KEY_ROTATED = "key.rotated"
    SYNC_CHANGE = "sync.change"
    SYNC_RUN = "sync.run"
    # One identity per person (core/directory/linking.py): a source's link to a user made or
    # dropped, and a person left unlinked because the keys matched ambiguously.
    IDENTITY_LINKED = "identity.linked"
    IDENTITY_UNLINKED = "identity.unlinked"
    IDENTITY_CONFLICT = "identity.conflict"
    POLICY_RELOADED = "policy.reloaded"
    POLICY_REJECTED = "policy.rejected"
    AUTHZ_DECISION = "authz.decision"
    AUDIT_ARCHIVED = "audit.archived"
    # Failure events of anonymous requests left out over the per-address budget, counted
    # (core/failure_audit.py).
    AUDIT_SUPPRESSED = "audit.suppressed"
    # Sign-in defences (core/throttle.py): refusals, locks starting, an admin's unlock.
    LOGIN_THROTTLED = "login.throttled"
    LOGIN_LOCKOUT = "login.lockout"
    CLIENT_AUTH_THROTTLED = "client.auth_throttled"
    CLIENT_AUTH_LOCKOUT = "client.auth_lockout"
    THROTTLE_CLEARED = "throttle.cleared"

    # --- CAS server front ---
    CAS_SERVICE_CREATED = "cas.service_created"
    CAS_SERVICE_REMOVED = "cas.service_removed"
    CAS_TICKET_ISSUED = "cas.ticket_issued"
    CAS_TICKET_VALIDATED = "cas.ticket_validated"
    CAS_TICKET_REJECTED = "cas.ticket_rejected"

    # --- SAML identity provider front ---
    SAML_RESPONSE_ISSUED = "saml.response_issued"
    SAML_REQUEST_REJECTED = "saml.request_rejected"
    SAML_LOGOUT_ANSWERED = "saml.logout_answered"
    SAML_SP_ADDED = "saml.sp_added"
    SAML_SP_REMOVED = "saml.sp_removed"

    # --- local directory data set by an admin (core/directory/local_*.py) ---
    DEPARTMENT_ADDED = "directory.department_added"
    DEPARTMENT_MOVED = "directory.department_moved"
    DEPARTMENT_MANAGER_SET = "directory.department_manager_set"
    DEPARTMENT_REMOVED = "directory.department_removed"
    GROUP_ADDED = "directory.group_added"
    GROUP_MEMBER_ADDED = "directory.group_member_added"
    GROUP_MEMBER_REMOVED = "directory.group_member_removed"
    GROUP_REMOVED = "directory.group_removed"

    # --- segregation of duties (core/authz/sod_*.py) ---
    SOD_VIOLATION = "sod.violation"
    SOD_EXCEPTION_GRANTED = "sod.exception_granted"
    SOD_EXCEPTION_EXPIRED = "sod.exception_expired"


def check_event_types(names: Sequence[str]) -> tuple[str, ...]:
    """Validates `--type` / `type=` filter values (exact names or `prefix.*`) against the
    closed list; raises `InvalidInput` naming the first one that matches no event type."""
    known = {e.value for e in EventType}
    for name in names:
        if name.endswith(".*"):
            if not any(k.startswith(name[:-1]) for k in known):
                raise InvalidInput(f"no audit event type starts with {name[:-1]!r}")
        elif name not in known:
            raise InvalidInput(
                f"unknown audit event type {name!r} (known: {', '.join(sorted(known))})"
            )
    return tuple(names)


# `Actor` and `PendingEvent` are made for every event recorded, on the token batch's thread
# once or twice per token. A frozen dataclass's own `__init__` sets each field through
# `object.__setattr__` (its `__setattr__` refuses), with a keyword call and a default
# factory for `details`: ~13,500 instructions for a `PendingEvent`, ~4,500 for an `Actor`.
# Theirs write the same values, with the same defaults (a new dict for each event without
# details), straight into the new object's `__dict__`, as oidc/messages.py's request and
# answer shapes do. Everything else is the dataclass's: fields, equality, hash, repr,
# `dataclasses.replace`, and the refusal of any later assignment (`FrozenInstanceError`).


@dataclass(frozen=True, init=False)
class Actor:
    type: ActorType
    id: str | None = None

    def __init__(self, type: ActorType, id: str | None = None) -> None:
        fields = self.__dict__
        fields["type"] = type
        fields["id"] = id

    @classmethod
    def system(cls, name: str = "idhub") -> Actor:
        return cls("system", name)


@dataclass(frozen=True)
class RequestContext:
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, init=False)
class PendingEvent:
    """An event not yet placed in the chain (for `record_many`)."""

    event_type: EventType
    actor: Actor
    target: str | None = None
    outcome: Outcome = "success"
    details: dict[str, Any] = field(default_factory=dict)
    ctx: RequestContext | None = None

    def __init__(
        self,
        event_type: EventType,
        actor: Actor,
        target: str | None = None,
        outcome: Outcome = "success",
        details: dict[str, Any] | None = None,
        ctx: RequestContext | None = None,
    ) -> None:
        fields = self.__dict__
        fields["event_type"] = event_type
        fields["actor"] = actor
        fields["target"] = target
        fields["outcome"] = outcome
        fields["details"] = {} if details is None else details
        fields["ctx"] = ctx


# ------------------------------------------------------------------ redaction

# Keys whose value is never a thing the log may hold, whatever a caller passes by mistake.
_SECRET_KEYS = frozenset(
    {
        "password", "passwd", "new_password", "secret", "client_secret", "access_token",
        "refresh_token", "id_token", "token", "code", "code_verifier", "assertion",
        "client_assertion", "subject_token", "actor_token", "logout_token", "private_key",
        "authorization", "cookie", "secret_key",
    }
)  # fmt: skip
# A JWS/JWT in compact form, or a PEM private key.
SECRET_SHAPE = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*|-----BEGIN [A-Z ]*PRIVATE KEY"
)
REDACTED = "[redacted]"


def scrub_details(details: dict[str, Any]) -> dict[str, Any]:
    """Replaces values under secret-named keys and token-shaped strings with a marker, and
    lists what it replaced under `_redacted`, so a careless caller cannot leak a secret into
    an append-only log (where it could never be removed) and the gap stays visible."""
    return scrub_flat(details)[0]


def scrub_flat(details: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """`scrub_details`, and whether the result is flat: no value of it is a dict or a list,
    so its canonical text needs no check for reference cycles
    (core/audit_chain.py `canonical_flat_details`)."""
    found: list[str] = []
    cleaned, flat = _clean_dict(details, "", found)
    if found:
        cleaned["_redacted"] = sorted(set(found))
        return cleaned, False
    return cleaned, flat


def plain_details_text(details: dict[str, Any]) -> str | None:
    """The canonical text of `details` (core/audit_chain.py `canonical_details`) when
    scrubbing would return it as it is and flat: exact `str` keys none of which names a
    secret, exact `str`, `int`, `bool` or `None` values, and no token or key shape in any of
    them. None for anything else, which then goes through `scrub_flat` and the encoder.

    A token's event is such a dict of five short strings. Walking it in `scrub_flat` (a
    `lower` and two substring searches per value) and then encoding it with the C encoder
    (a sorted list of its items, the pieces accumulated and joined) cost ~30,000
    instructions per event. Here the text is written as the encoder writes it (keys sorted,
    `encode_basestring` for strings as with `ensure_ascii=False`, ints by their repr), each
    key's checked and encoded form is remembered (`_PLAIN_KEYS`), and the finished text is
    searched once for the two prefixes `SECRET_SHAPE` needs: it holds every key and value
    unaltered but for JSON's escapes, which touch no character of either prefix, so a value
    holding one is caught here and scrubbed the usual way."""
    try:
        keys = sorted(details)
    except TypeError:  # keys of several types: the encoder's own error, the usual way
        return None
    parts: list[str] = []
    for key in keys:
        if key.__class__ is not str:
            return None
        name = _PLAIN_KEYS.get(key)
        if name is None:
            if key.lower() in _SECRET_KEYS:
                return None
            name = _encode_text(key) + ":"
            if len(_PLAIN_KEYS) < _PLAIN_KEYS_KEPT:
                _PLAIN_KEYS[key] = name
        item = details[key]
        kind = item.__class__
        if kind is str:
            parts.append(name + _encode_text(item))
        elif kind is int:
            parts.append(name + int.__repr__(item))  # what the encoder writes for an int
        elif kind is bool:
            parts.append(name + ("true" if item else "false"))
        elif item is None:
            parts.append(name + "null")
        else:  # floats, containers, subclasses, objects: the usual way
            return None
    text = "{" + ",".join(parts) + "}"
    if "eyJ" in text or "-----BEGIN " in text:
        return None
    return text


# Detail keys seen not to name a secret, with their JSON text and colon. The keys are the
# callers' constants; the bound only caps what odd callers could add.
_PLAIN_KEYS: dict[str, str] = {}
_PLAIN_KEYS_KEPT = 1024


# Every audited request passes through here (a token's event: five short strings), so the
# walk builds a key's path only when it redacts or descends, and tries the two literal
# prefixes the pattern needs before running it; what it returns is unchanged.


def _clean_dict(value: dict[Any, Any], path: str, found: list[str]) -> tuple[dict[Any, Any], bool]:
    """The cleaned copy, and whether it is flat (no value of it a dict or a list). A string's
    check is inline (no call per value) and its path is built only when it is redacted."""
    out: dict[Any, Any] = {}
    flat = True
    for key, item in value.items():
        if item is None:  # kept under any key
            out[key] = item
            continue
        name = key if key.__class__ is str else str(key)
        if name.lower() in _SECRET_KEYS and item != "" and item != REDACTED:
            found.append(f"{path}.{name}" if path else name)
            out[key] = REDACTED
        elif item.__class__ is str:
            if ("eyJ" in item or "-----BEGIN " in item) and SECRET_SHAPE.search(item):
                found.append(f"{path}.{name}" if path else name)
                item = REDACTED
            out[key] = item
        else:
            out[key] = cleaned = _clean(item, f"{path}.{name}" if path else name, found)
            if isinstance(cleaned, dict | list):
                flat = False
    return out, flat


def _clean(value: Any, path: str, found: list[str]) -> Any:
    if isinstance(value, dict):
        return _clean_dict(value, path, found)[0]
    if isinstance(value, list | tuple):
        return [_clean(item, f"{path}[{i}]", found) for i, item in enumerate(value)]
    if isinstance(value, str):
        return _clean_str(value, path, found)
    return value


def _clean_str(value: str, path: str, found: list[str]) -> str:
    if ("eyJ" in value or "-----BEGIN " in value) and SECRET_SHAPE.search(value):
        found.append(path)
        return REDACTED
    return value


# ------------------------------------------------------------------ storable text

# PostgreSQL stores no NUL in text or jsonb (SQLite would), so an actor id, user agent or
# detail carrying one (an upstream profile, a SCIM value) made the append fail there. Every
# recorded text is stored with U+FFFD in its place, on both databases, so the chain, the
# search and an export read the same everywhere.
NUL_SHOWN_AS = "\ufffd"


def storable_text(value: str | None) -> str | None:
    return value if value is None or "\x00" not in value else value.replace("\x00", NUL_SHOWN_AS)


def storable_details(value: Any) -> Any:
    """`value` with every NUL in its strings and keys replaced (only called when its JSON
    text holds one: the common event pays one substring check)."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_details(k): storable_details(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_details(item) for item in value]
    return value


# ------------------------------------------------------------------ stored events


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    ts: float
    event_type: str
    actor_type: str
    actor_id: str | None
    target: str | None
    outcome: str
    client_ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS_HASH
    hash: str = ""

    def canonical(self) -> bytes:
        """The bytes the hash covers: every field but `hash` and `prev_hash`."""
        return canonical_bytes(self.seq, self._tail())

    def _tail(self) -> str:
        return canonical_tail(
            ts=self.ts,
            event_type=self.event_type,
            actor_type=self.actor_type,
            actor_id=self.actor_id,
            target=self.target,
            outcome=self.outcome,
            client_ip=self.client_ip,
            user_agent=self.user_agent,
            request_id=self.request_id,
            details_json=canonical_details(self.details),
        )

    def compute_hash(self) -> str:
        return chain_hash(self.prev_hash, self.canonical())

    def to_dict(self) -> dict[str, Any]:
        """The export form (JSON lines, API, archive): every field, hashes included."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "time": iso_time(self.ts),
            "event_type": self.event_type,
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "target": self.target,
            "outcome": self.outcome,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEvent:
        return cls(
            seq=int(data["seq"]),
            ts=float(data["ts"]),
            event_type=str(data["event_type"]),
            actor_type=str(data["actor_type"]),
            actor_id=data.get("actor_id"),
            target=data.get("target"),
            outcome=str(data["outcome"]),
            client_ip=data.get("client_ip"),
            user_agent=data.get("user_agent"),
            request_id=data.get("request_id"),
            details=dict(data.get("details") or {}),
            prev_hash=str(data["prev_hash"]),
            hash=str(data["hash"]),
        )


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(value: str, *, now: float) -> float:
    """`--since/--until/--before` values: an ISO 8601 date or date-time (UTC unless it says
    otherwise; a bare date is its midnight), epoch seconds, or an age such as `15m`, `7d`."""
    text = value.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use 2026-01-31, 2026-01-31T08:00:00Z, epoch seconds "
            "or an age like 15m, 12h, 7d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class AuditFilter:
    """What `search`, `export` and the API select; every field narrows, None means any."""

    event_types: tuple[str, ...] = ()
    actor: str | None = None  # "type:id", "type" or a bare id
    target: str | None = None
    outcome: str | None = None
    since: float | None = None  # inclusive
    until: float | None = None  # exclusive


class Auditor(Protocol):
    def record(
        self,
        event_type: EventType,
        *,
        actor: Actor,
        target: str | None = None,
        outcome: Outcome = "success",
        details: dict[str, Any] | None = None,
        ctx: RequestContext | None = None,
    ) -> None:
        """Appends one event. Raises `AuditError` if it could not be written durably."""
        ...

    def record_many(self, events: Sequence[PendingEvent]) -> None:
        """Appends events in order, in one transaction: all or none."""
        ...
