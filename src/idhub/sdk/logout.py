"""Validation of back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0, section 2.6),
for a system's `backchannel_logout_uri` handler. On success, end the local sessions whose
idhub `sid` (or, without one, whose `sub`) the event names."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from idhub.sdk.jwks import JwksCache
from idhub.sdk.tokens import DEFAULT_ALGORITHMS, InvalidToken, check_claims, verify_signed

LOGOUT_TOKEN_TYPES = ("logout+jwt", "application/logout+jwt")
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@dataclass(frozen=True)
class LogoutEvent:
    sub: str | None
    sid: str | None
    jti: str


class LogoutTokenValidator:
    def __init__(
        self,
        issuer: str,
        *,
        client_id: str,
        jwks_uri: str | None = None,
        http: httpx.Client | None = None,
        max_age: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._jwks = JwksCache(
            jwks_uri or issuer.rstrip("/") + "/jwks", http=http or httpx.Client(timeout=5.0)
        )
        self._max_age = max_age
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def validate(self, token: str) -> LogoutEvent:
        claims = verify_signed(
            token,
            self._jwks,
            types=LOGOUT_TOKEN_TYPES,
            algorithms=DEFAULT_ALGORITHMS,
            what="a logout token",
        )
        now = self._clock()
        check_claims(
            claims,
            issuer=self.issuer,
            audience=self.client_id,
            now=now,
            leeway=30,
            required=("iss", "aud", "iat", "jti", "events"),
        )
        if now - float(claims["iat"]) > self._max_age:
            raise InvalidToken("issued too long ago")
        events = claims["events"]
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise InvalidToken("no back-channel logout event")
        if "nonce" in claims:
            raise InvalidToken("a logout token must not carry a nonce")
        if "sub" not in claims and "sid" not in claims:
            raise InvalidToken("names neither sub nor sid")
        jti = str(claims["jti"])
        with self._lock:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            if jti in self._seen:
                raise InvalidToken("replayed logout token")
            self._seen[jti] = now + self._max_age
        return LogoutEvent(sub=claims.get("sub"), sid=claims.get("sid"), jti=jti)
