"""The answers of the token-side endpoints when something refuses or is away, in one place.

The provider (`oidc/server.py`) and its lean paths (`oidc/introspection_lean.py`,
`oidc/client_credentials.py` through `Provider.token_many`) must answer a protocol error, an
audit trail that cannot be written and a database that cannot be reached with the same
bytes, whichever path a request took; so they share these instead of one reaching into the
other's private methods.
"""

from __future__ import annotations

import logging

from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Error

from idhub.errors import StorageError
from idhub.oidc.messages import OAuthResponseData
from idhub.oidc.protocol_errors import TemporarilyUnavailable

# The provider's logger: an outage line reads the same whichever path met it.
log = logging.getLogger("idhub.oidc")

AUDIT_AWAY = "the audit trail cannot be written; try again later"
DATABASE_AWAY = "the database is not reachable; try again later"


def error_answer(exc: OAuth2Error) -> OAuthResponseData:
    """authlib's rendering of a protocol error (RFC 6749 5.2: status, JSON body, headers)."""
    status, body, headers = exc()
    return OAuthResponseData(status, list(headers), body)


def unavailable(description: str = AUDIT_AWAY) -> OAuthResponseData:
    """503 `temporarily_unavailable` with Retry-After: nothing was issued, retry."""
    return error_answer(TemporarilyUnavailable(description))


def database_down(exc: StorageError, endpoint: str = "token") -> OAuthResponseData:
    """The 503 of a database that cannot be reached, logged as one line without traceback:
    in an outage every request fails alike."""
    log.error("%s request failed on the database: %s", endpoint, exc)
    return unavailable(DATABASE_AWAY)


def bad_credentials() -> OAuthResponseData:
    """HTTP Basic credentials that are not UTF-8 (authlib would raise on them)."""
    return error_answer(
        InvalidClientError(status_code=401, description="client authentication failed")
    )
