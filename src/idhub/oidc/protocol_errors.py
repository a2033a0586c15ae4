"""The OAuth error answers authlib does not ship, and the parameter check every grant uses."""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error

# Seconds a client is asked to wait before retrying a 503 (the web layer's answers say the same).
RETRY_AFTER = "1"


class TemporarilyUnavailable(OAuth2Error):  # type: ignore[misc]
    """A 503 the client may simply retry: the audit trail or the database is down."""

    error = "temporarily_unavailable"
    status_code = 503

    def get_headers(self) -> list[tuple[str, str]]:
        # RFC 6749 leaves the wait to HTTP: Retry-After (RFC 9110 10.2.3) on every 503.
        return [*super().get_headers(), ("Retry-After", RETRY_AFTER)]


class InvalidTarget(OAuth2Error):  # type: ignore[misc]
    """RFC 8707: the requested resource is unknown or not allowed for this client."""

    error = "invalid_target"


def require_param(form: Any, name: str) -> str:
    value = form.get(name)
    if not value:
        raise InvalidRequestError(f"missing '{name}' parameter")
    return str(value)
