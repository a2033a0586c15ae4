"""Back-channel logout (OpenID Connect Back-Channel Logout 1.0) for a system's
`backchannel_logout_uri`: validating the logout token (section 2.6) and a receiver that calls
the system's hook and answers idhub as section 2.8 says.

    receiver = BackchannelLogoutReceiver(
        LogoutTokenValidator("https://sso.example.com", client_id="reimburse"),
        on_logout=lambda event: sessions.end(sid=event.sid, sub=event.sub),
    )
    reply = receiver.handle_form(request.form)       # Flask; Django: request.POST
    return reply.body_bytes(), reply.status, reply.headers

The hook ends every local session bound to the event's idhub `sid` (or, without one, to every
session of `sub`). A token is accepted once: its `jti` is remembered until it could no longer
be fresh. If the hook raises, idhub gets a 400 and the `jti` is forgotten, so a retry works.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx

from idhub.sdk.errors import Expired, InvalidToken, MissingClaim, NotALogoutToken, Replayed
from idhub.sdk.jwks import JwksCache
from idhub.sdk.replies import Reply
from idhub.sdk.tokens import DEFAULT_ALGORITHMS, check_claims, verify_signed

LOGOUT_TOKEN_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_BODY = 65_536
log = logging.getLogger("idhub.sdk.logout")


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
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._jwks = JwksCache(
            jwks_uri or issuer.rstrip("/") + "/jwks", http=http or httpx.Client(timeout=5.0)
        )
        self._max_age = max_age
        self._leeway = leeway
        self._clock = clock
        # jti -> when it may be forgotten; insertion order is expiry order.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def validate(self, token: str) -> LogoutEvent:
        """The event of a valid logout token not seen before; `InvalidToken` otherwise."""
        event = self.check(token)
        self.remember(event)
        return event

    def check(self, token: str) -> LogoutEvent:
        """Everything but the replay check (`remember` does that)."""
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
            leeway=self._leeway,
            required=("iss", "aud", "iat", "jti", "events"),
        )
        if now - float(claims["iat"]) > self._max_age + self._leeway:
            raise Expired("the logout token was issued too long ago")
        events = claims["events"]
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise NotALogoutToken("no back-channel logout event")
        if "nonce" in claims:
            raise NotALogoutToken("a logout token must not carry a nonce")
        sub, sid = claims.get("sub"), claims.get("sid")
        if sub is None and sid is None:
            raise NotALogoutToken("names neither sub nor sid")
        for name, value in (("sub", sub), ("sid", sid), ("jti", claims["jti"])):
            if value is not None and (not isinstance(value, str) or not value):
                raise MissingClaim(f"{name} is not a non-empty string")
        return LogoutEvent(sub=sub, sid=sid, jti=claims["jti"])

    def remember(self, event: LogoutEvent) -> None:
        """Marks the token's `jti` as used; `Replayed` if it already was."""
        now = self._clock()
        with self._lock:
            seen = self._seen
            while seen and next(iter(seen.values())) <= now:
                seen.popitem(last=False)
            if event.jti in seen:
                raise Replayed("this logout token was received before")
            seen[event.jti] = now + self._max_age + 2 * self._leeway

    def forget(self, event: LogoutEvent) -> None:
        with self._lock:
            self._seen.pop(event.jti, None)


LogoutHook = Callable[[LogoutEvent], None]


class BackchannelLogoutReceiver:
    """The handler of a system's `backchannel_logout_uri`, for any framework: give it the
    request's form (or raw body) and send back the `Reply`."""

    def __init__(self, validator: LogoutTokenValidator, *, on_logout: LogoutHook) -> None:
        self.validator = validator
        self._on_logout = on_logout

    def handle_body(self, body: bytes, content_type: str | None) -> Reply:
        """The raw POST body (`application/x-www-form-urlencoded`)."""
        media = (content_type or "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            return _refused("the body must be application/x-www-form-urlencoded")
        if len(body) > MAX_BODY:
            return _refused("the body is too large")
        try:
            form = parse_qs(body.decode("ascii"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return _refused("the body is not a form")
        return self.handle_form(form)

    def handle_form(self, form: Mapping[str, Any]) -> Reply:
        """A parsed form: a mapping of name to value or to a list of values (Flask's
        `request.form`, Django's `request.POST`, Starlette's `await request.form()`)."""
        values = _values(form, "logout_token")
        if len(values) != 1 or not isinstance(values[0], str) or not values[0]:
            return _refused("exactly one logout_token is required")
        try:
            event = self.validator.check(values[0])
            self.validator.remember(event)
        except InvalidToken as exc:
            log.info("back-channel logout refused: %s", exc)
            return _refused("the logout token is not valid")
        try:
            self._on_logout(event)
        except Exception:
            self.validator.forget(event)  # so idhub's retry is not taken for a replay
            log.exception("back-channel logout hook failed (sid %s)", event.sid)
            return _refused("the logout could not be completed")
        return Reply(200, {"Cache-Control": "no-store"}, None)


def _values(form: Mapping[str, Any], name: str) -> list[Any]:
    getlist = getattr(form, "getlist", None)
    if callable(getlist):  # Werkzeug MultiDict, Django QueryDict, Starlette FormData
        return list(getlist(name))
    value = form.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _refused(description: str) -> Reply:
    body = {"error": "invalid_request", "error_description": description}
    return Reply(400, {"Cache-Control": "no-store"}, body)
