"""Login tickets: proof that a browser comes back from the login page for the request it left.

A front that sends a browser to the login page attaches a ticket saying "signed in at or after
<moment>" (HMAC-signed, short-lived). When the browser returns with it, a session that started at
or after that moment satisfies "sign in again" (OIDC `prompt=login` / `max_age`, CAS `renew`,
SAML `ForceAuthn`) instead of sending the browser round in circles.
"""

from __future__ import annotations

import hmac

from idhub.core.crypto import KeyedHasher

TICKET_TTL = 600.0
MAX_TICKET = 80


class LoginTickets:
    def __init__(self, hasher: KeyedHasher) -> None:
        self._hasher = hasher

    def issue(self, now: float) -> str:
        # Milliseconds: a session started earlier within the same second must not count.
        ts = str(int(now * 1000))
        return f"{ts}.{self._mac(ts)}"

    def since(self, ticket: str | None, now: float) -> float | None:
        """The moment the ticket names, if it is genuine and recent; else None."""
        if not ticket or "." not in ticket or len(ticket) > MAX_TICKET:
            return None
        ts, mac = ticket.split(".", 1)
        if not ts.isdigit() or not hmac.compare_digest(self._mac(ts), mac):
            return None
        issued = int(ts) / 1000
        return issued if 0 <= now - issued <= TICKET_TTL else None

    def _mac(self, ts: str) -> str:
        return self._hasher.hash(ts)[:32]
