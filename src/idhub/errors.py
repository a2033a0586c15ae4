"""The exception tree. Every error idhub raises on purpose derives from `IdhubError`
and carries a stable `code` that the web layer and the CLI map to a status or exit code.

    IdhubError
    ├── ConfigError            bad settings file or environment (file:line when known)
    ├── StorageError           a database statement failed (a write that could not be made)
    │   ├── StorageUnavailable     the database cannot be reached right now (retry later)
    │   └── SchemaNotReady         the database has no idhub tables, or older ones (init/migrate)
    ├── NotFound               a named user, client, key, source ... does not exist
    ├── Conflict               the thing exists already / concurrent change
    ├── InvalidInput           a value an admin or system supplied is not acceptable
    │   └── SamlRequestRejected    a SAML message idhub refuses to answer
    ├── AccessDenied           the caller is known but may not ask this
    ├── AuthenticationFailed   sign-in refused (reason kept for the audit log, not the user)
    │   ├── DirectoryUnavailable   the user's directory could not be reached
    │   └── TooManyAttempts        refused by the throttle, whatever the password
    ├── PolicyError            a policy file is wrong (file:line)
    ├── DirectoryError         an LDAP / OA directory could not be read as configured
    │   └── SyncAborted        a sync stopped by its safety brake; nothing was changed
    └── AuditError             the audit trail could not be written or does not verify
        └── AuditUnavailable       ... because the database cannot be reached (retry later)

Protocol errors on the OAuth/OIDC endpoints are authlib's `OAuth2Error` classes, not these.
"""

from __future__ import annotations


class IdhubError(Exception):
    code = "idhub_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class Located(IdhubError):
    """An error that points at a place in a file an admin edits."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.file = file
        self.line = line

    @property
    def location(self) -> str | None:
        if self.file is None:
            return None
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def __str__(self) -> str:
        text = super().__str__()
        loc = self.location
        return text if loc is None else f"{loc}: {text}"


class ConfigError(Located):
    code = "config_error"


class StorageError(IdhubError):
    code = "storage_error"


class StorageUnavailable(StorageError):
    """Connection refused, lost or timed out: nothing is wrong with the request itself."""

    code = "storage_unavailable"


class SchemaNotReady(StorageError):
    """The database answers but lacks idhub's tables (`idhub init` never ran against it) or has
    an older schema than this idhub (`idhub migrate` not run after an upgrade)."""

    code = "schema_not_ready"


class NotFound(IdhubError):
    code = "not_found"


class Conflict(IdhubError):
    code = "conflict"


class InvalidInput(IdhubError):
    code = "invalid_input"


class AccessDenied(IdhubError):
    code = "access_denied"


class AuthenticationFailed(IdhubError):
    """`reason` is for the audit log; users only ever see a generic sentence."""

    code = "authentication_failed"

    def __init__(self, reason: str, message: str = "Sign-in failed") -> None:
        super().__init__(message)
        self.reason = reason


class DirectoryUnavailable(AuthenticationFailed):
    code = "directory_unavailable"

    def __init__(self, message: str = "The directory service cannot be reached") -> None:
        super().__init__("directory_unreachable", message)


class TooManyAttempts(AuthenticationFailed):
    """Too many failures from this source or for this account: the attempt was refused before
    the password was looked at. `retry_after` (seconds) is what the person may be told."""

    code = "too_many_attempts"

    def __init__(self, reason: str, *, retry_after: float) -> None:
        super().__init__(reason, "Too many attempts")
        self.retry_after = retry_after

    @property
    def minutes(self) -> int:
        return max(1, int(-(-self.retry_after // 60)))


class PolicyError(Located):
    code = "policy_error"


class DirectoryError(IdhubError):
    code = "directory_error"


class SyncAborted(DirectoryError):
    code = "sync_aborted"


class AuditError(IdhubError):
    code = "audit_error"


class AuditUnavailable(AuditError):
    """The trail could not be written because the database cannot be reached right now."""

    code = "audit_unavailable"


class SamlRequestRejected(InvalidInput):
    """A SAML message idhub will not answer (unknown SP, bad or missing signature, an ACS or
    destination the metadata does not list, a replay, an expired request)."""

    code = "saml_request_rejected"
