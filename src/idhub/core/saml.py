"""The SAML values storage and the protocol front share: binding names, an endpoint from an
SP's metadata, and a registered SP as stored (the front parses its metadata; see
`saml/registry.py`), so adapters never import the `saml/` front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"


@dataclass(frozen=True)
class Endpoint:
    binding: str
    location: str
    index: int | None = None
    is_default: bool = False


@dataclass(frozen=True)
class SpRecord:
    """A registered service provider as the database holds it."""

    name: str
    domain: str
    metadata_xml: str
    # The audience of its assertions, taken from its metadata when it was registered.
    entity_id: str
    name_id_format: str = "persistent"
    legacy_sha1: bool = False
    require_signed_requests: bool = False
    first_party: bool = False
    attributes: tuple[str, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    # A second factor for everyone signing in to it, like an OIDC client's `require_mfa`.
    require_mfa: bool = False


class SpStore(Protocol):
    def insert(self, sp: SpRecord) -> None:
        """Raises `Conflict` when the name or the entity id is taken."""
        ...

    def replace(self, sp: SpRecord) -> None: ...
    def get(self, name: str) -> SpRecord | None: ...
    def by_entity_id(self, entity_id: str) -> SpRecord | None: ...
    def all(self) -> list[SpRecord]: ...
    def delete(self, name: str) -> bool: ...
    def version(self) -> str: ...
