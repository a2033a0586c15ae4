"""Why a token was refused, one class per reason. Catch `InvalidToken` to deny; look at the
subclass (or `str()`) to log why. Never echo the message to the caller of your API: RFC 6750
says `invalid_token` and no more.

    InvalidToken              must not be trusted (`status` 401, `error` "invalid_token")
    ├── MissingToken          no bearer token in the request (401, no error code)
    ├── MalformedToken        not a compact JWS of JSON objects, or too large
    ├── WrongTokenType        `typ` is not the kind expected (`at+jwt`, `logout+jwt`)
    ├── AlgorithmNotAllowed   `alg` outside the allow-list, or not the one its key is for
    ├── UnknownKey            `kid` not in the issuer's key set, even after a refresh
    ├── BadSignature          the signature does not verify
    ├── MissingClaim          a required claim is absent or of the wrong type
    ├── WrongIssuer           `iss` is not the configured issuer
    ├── WrongAudience         this system is not in `aud`
    ├── Expired               `exp` (+ leeway) has passed, or a logout token is too old
    ├── NotYetValid           `nbf` or `iat` (- leeway) is in the future
    ├── Revoked               introspection says the token is no longer active
    ├── NotALogoutToken       no back-channel event, a `nonce`, neither `sub` nor `sid`
    ├── Replayed              a logout token whose `jti` was already received
    └── VerifierUnavailable   keys or introspection could not be reached (503: try again)
"""

from __future__ import annotations


class InvalidToken(Exception):
    """The token must not be trusted; `str()` says why, for logs (never echo it to users)."""

    status = 401
    error: str | None = "invalid_token"


class MissingToken(InvalidToken):
    # RFC 6750 3.1: a request without credentials gets a challenge with no error code.
    error = None


class MalformedToken(InvalidToken):
    pass


class WrongTokenType(InvalidToken):
    pass


class AlgorithmNotAllowed(InvalidToken):
    pass


class UnknownKey(InvalidToken):
    pass


class BadSignature(InvalidToken):
    pass


class MissingClaim(InvalidToken):
    pass


class WrongIssuer(InvalidToken):
    pass


class WrongAudience(InvalidToken):
    pass


class Expired(InvalidToken):
    pass


class NotYetValid(InvalidToken):
    pass


class Revoked(InvalidToken):
    pass


class NotALogoutToken(InvalidToken):
    pass


class Replayed(InvalidToken):
    pass


class VerifierUnavailable(InvalidToken):
    """idhub's keys or its introspection endpoint could not be reached: the token is refused
    (fail closed), but the caller should retry later rather than sign in again."""

    status = 503
    error = "temporarily_unavailable"
