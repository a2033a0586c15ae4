"""The audit vocabulary and the port every part records through.

Each event is hash-chained: `hash = SHA-256(prev_hash || canonical(event))`, so an edited,
deleted, inserted or reordered event breaks the chain at a point `verify` can name.
The closed list of event types lives here; adding one is a deliberate change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from collections.abc import Sequence
from typing import Any, Literal, Protocol

GENESIS_HASH = "0" * 64

ActorType = Literal["user", "client", "admin", "system"]
Outcome = Literal["success", "failure", "denied", "error"]


class EventType(StrEnum):
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    MFA_SUCCEEDED = "mfa.succeeded"
    MFA_FAILED = "mfa.failed"
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
    POLICY_RELOADED = "policy.reloaded"
    POLICY_REJECTED = "policy.rejected"
    AUTHZ_DECISION = "authz.decision"
    AUDIT_ARCHIVED = "audit.archived"


@dataclass(frozen=True)
class Actor:
    type: ActorType
    id: str | None = None

    @classmethod
    def system(cls, name: str = "idhub") -> Actor:
        return cls("system", name)


@dataclass(frozen=True)
class RequestContext:
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


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
        """The bytes the hash covers: every field but `hash`, in a fixed order and form."""
        body = {
            "seq": self.seq,
            # repr of a float round-trips exactly; avoids locale and precision drift.
            "ts": repr(float(self.ts)),
            "event_type": self.event_type,
            "actor_type": self.actor_type,
            "actor_id": self.actor_id,
            "target": self.target,
            "outcome": self.outcome,
            "client_ip": self.client_ip,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "details": self.details,
        }
        return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()

    def compute_hash(self) -> str:
        return chain_hash(self.prev_hash, self.canonical())


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(canonical)
    return digest.hexdigest()


@dataclass(frozen=True)
class PendingEvent:
    """An event not yet placed in the chain (for `record_many`)."""

    event_type: EventType
    actor: Actor
    target: str | None = None
    outcome: Outcome = "success"
    details: dict[str, Any] = field(default_factory=dict)
    ctx: RequestContext | None = None


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
