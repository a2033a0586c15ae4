"""Pending logins: "this person has passed the first factor", carried in the second-factor form.

Between the password and the second factor nothing is stored server-side: the form carries a
short-lived HMAC-signed token naming the person, the factors they presented so far and the
level the request needs. It proves only the first step, so a stolen one is worth nothing
without the second factor, and it expires after a few minutes.
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass

from idhub.core.crypto import KeyedHasher

PENDING_TTL = 300.0
MAX_PENDING = 600


@dataclass(frozen=True)
class PendingLogin:
    user_id: int
    amr: tuple[str, ...]
    needed: int
    issued_at: float


class PendingLogins:
    def __init__(self, hasher: KeyedHasher) -> None:
        self._hasher = hasher

    def issue(self, pending: PendingLogin) -> str:
        body = json.dumps(
            [pending.user_id, list(pending.amr), pending.needed, int(pending.issued_at * 1000)],
            separators=(",", ":"),
        )
        encoded = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{encoded}.{self._mac(encoded)}"

    def read(self, token: str | None, now: float) -> PendingLogin | None:
        """The pending login a token names, if it is genuine and recent; else None."""
        if not token or len(token) > MAX_PENDING or token.count(".") != 1:
            return None
        encoded, mac = token.split(".")
        if not hmac.compare_digest(self._mac(encoded), mac):
            return None
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            user_id, amr, needed, issued_ms = json.loads(raw)
            pending = PendingLogin(
                int(user_id), tuple(str(a) for a in amr), int(needed), int(issued_ms) / 1000
            )
        except (ValueError, TypeError):
            return None
        return pending if 0 <= now - pending.issued_at <= PENDING_TTL else None

    def _mac(self, encoded: str) -> str:
        return self._hasher.hash(encoded)[:32]
