"""What `[server] mode = "production"` (or `IDHUB_ENV=production`) refuses to start with.

Each refusal is one line naming the setting to change, so a failed deployment says why in its
first log line rather than misbehaving later: a plain-http issuer leaks codes and tokens on the
wire, a short or placeholder secret key makes every client-secret HMAC and sealed signing key
guessable, and debug output carries request data.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from idhub.config.settings import Settings
from idhub.errors import ConfigError

# A key from `idhub init` is 43 characters of base64 (32 random bytes).
MIN_SECRET_KEY_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 12
_PLACEHOLDERS = ("change", "secret", "example", "password", "idhub", "default", "test")


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _weak_key(value: str) -> bool:
    lowered = value.lower()
    return (
        len(value) < MIN_SECRET_KEY_LENGTH
        or len(set(value)) < MIN_DISTINCT_CHARACTERS
        or any(word in lowered for word in _PLACEHOLDERS)
    )


def production_problem(settings: Settings) -> str | None:
    """Why these settings may not serve in production mode; None if they may (or the mode is
    not production)."""
    if not settings.production:
        return None
    issuer = urlsplit(settings.server.issuer)
    if issuer.scheme != "https" and not _loopback(issuer.hostname or ""):
        return (
            f"production mode needs an https:// issuer, not {settings.server.issuer} "
            "(set [server] issuer or IDHUB_ISSUER)"
        )
    key = settings.secret_key
    if key is None or not key.reveal():
        return "production mode needs a secret key (set IDHUB_SECRET_KEY or run `idhub init`)"
    if _weak_key(key.reveal()):
        return (
            f"production mode refuses a weak secret key (at least {MIN_SECRET_KEY_LENGTH} "
            "random characters; `idhub init` makes one)"
        )
    if settings.server.debug:
        return "production mode refuses [server] debug = true (unset it or IDHUB_DEBUG)"
    for name, upstream in settings.upstream_oidc.items():
        # The client secret and the codes travel to this issuer: plain http leaks them.
        parts = urlsplit(upstream.issuer)
        if parts.scheme != "https" and not _loopback(parts.hostname or ""):
            return f"production mode needs an https:// issuer in [upstream.{name}]"
    return None


def require_production_ready(settings: Settings) -> None:
    """Raises `ConfigError` with the one-line reason of `production_problem`."""
    problem = production_problem(settings)
    if problem is not None:
        raise ConfigError(problem)
