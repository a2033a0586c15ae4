"""SCIM errors carry the HTTP status and the RFC 7644 §3.12 `scimType` they are rendered with."""

from __future__ import annotations

from idhub.errors import IdhubError


class ScimError(IdhubError):
    code = "scim_error"

    def __init__(self, detail: str, *, status: int = 400, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.scim_type = scim_type


def invalid_filter(detail: str) -> ScimError:
    return ScimError(detail, scim_type="invalidFilter")


def invalid_path(detail: str) -> ScimError:
    return ScimError(detail, scim_type="invalidPath")


def invalid_value(detail: str) -> ScimError:
    return ScimError(detail, scim_type="invalidValue")


def invalid_syntax(detail: str) -> ScimError:
    return ScimError(detail, scim_type="invalidSyntax")


def not_found(detail: str) -> ScimError:
    return ScimError(detail, status=404)


def uniqueness(detail: str) -> ScimError:
    return ScimError(detail, status=409, scim_type="uniqueness")


def precondition_failed(detail: str) -> ScimError:
    return ScimError(detail, status=412)
