"""The registered SAML service providers (`idhub saml sp add NAME --metadata ... --domain D`).

An SP's `name` is its id inside idhub (what sessions, consent and the audit trail name), its
`domain` the policy domain its roles come from, and its metadata's entity id the audience of
every assertion it gets. Everything an SP is sent goes to an endpoint its metadata lists.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from idhub.core.audit import Actor, Auditor, EventType
from idhub.core.clock import Clock
from idhub.core.saml import SpRecord, SpStore
from idhub.core.transactions import UnitOfWork
from idhub.errors import Conflict, InvalidInput, NotFound
from idhub.saml.attributes import ATTRIBUTE_URIS
from idhub.saml.metadata import SpMetadata, parse_sp_metadata

if TYPE_CHECKING:
    from idhub.saml.encryption import AssertionEncrypter

NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAME_ID_FORMATS = {
    "persistent": NAMEID_PERSISTENT,
    "email": NAMEID_EMAIL,
    "unspecified": NAMEID_UNSPECIFIED,
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class ServiceProvider:
    name: str
    domain: str
    metadata_xml: str
    name_id_format: str = "persistent"
    # SHA-1 signatures are refused from and never sent to an SP unless it is marked legacy.
    legacy_sha1: bool = False
    # Refuse its AuthnRequests unless signed, even if its metadata does not say it signs.
    require_signed_requests: bool = False
    # The company's own system: no consent page (like a first-party OIDC client).
    first_party: bool = False
    # Friendly names of the attributes released (see saml/attributes.py); empty: all.
    attributes: tuple[str, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    # A second factor for everyone signing in to it (like an OIDC client's).
    require_mfa: bool = False
    metadata: SpMetadata = field(init=False, repr=False, compare=False)
    # Set when the metadata publishes an encryption key: its assertions are sent encrypted.
    encrypter: AssertionEncrypter | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metadata = parse_sp_metadata(self.metadata_xml)
        object.__setattr__(self, "metadata", metadata)
        encrypter = None
        if metadata.encryption_certs:
            # libxmlsec1 is loaded for the first SP that asks for encrypted assertions.
            from idhub.saml.encryption import AssertionEncrypter, choose_cipher

            encrypter = AssertionEncrypter(
                metadata.encryption_certs[0], cipher=choose_cipher(metadata.encryption_methods)
            )
        object.__setattr__(self, "encrypter", encrypter)

    def record(self) -> SpRecord:
        return SpRecord(
            name=self.name,
            domain=self.domain,
            metadata_xml=self.metadata_xml,
            entity_id=self.entity_id,
            name_id_format=self.name_id_format,
            legacy_sha1=self.legacy_sha1,
            require_signed_requests=self.require_signed_requests,
            first_party=self.first_party,
            attributes=self.attributes,
            created_at=self.created_at,
            updated_at=self.updated_at,
            require_mfa=self.require_mfa,
        )

    @classmethod
    def from_record(cls, record: SpRecord) -> ServiceProvider:
        return cls(
            name=record.name,
            domain=record.domain,
            metadata_xml=record.metadata_xml,
            name_id_format=record.name_id_format,
            legacy_sha1=record.legacy_sha1,
            require_signed_requests=record.require_signed_requests,
            first_party=record.first_party,
            attributes=record.attributes,
            created_at=record.created_at,
            updated_at=record.updated_at,
            require_mfa=record.require_mfa,
        )

    @property
    def entity_id(self) -> str:
        return self.metadata.entity_id

    @property
    def name_id_format_uri(self) -> str:
        return NAME_ID_FORMATS[self.name_id_format]


class SpRegistry:
    """`services.saml_sps`."""

    def __init__(self, store: SpStore, audit: Auditor, *, clock: Clock, uow: UnitOfWork) -> None:
        self._uow = uow
        self._store = store
        self._audit = audit
        self._clock = clock
        # Parsed metadata per (name, updated_at): parsing XML on every request would cost
        # more than answering it. A changed SP has a new `updated_at`, so stale entries fall out.
        self._parsed: dict[tuple[str, float], ServiceProvider] = {}
        self._lock = threading.Lock()

    def _provider(self, record: SpRecord | None) -> ServiceProvider | None:
        if record is None:
            return None
        key = (record.name, record.updated_at)
        sp = self._parsed.get(key)
        if sp is None:
            sp = ServiceProvider.from_record(record)
            with self._lock:
                if len(self._parsed) > 1000:
                    self._parsed.clear()
                self._parsed[key] = sp
        return sp

    def add(
        self,
        name: str,
        *,
        metadata_xml: str,
        domain: str,
        name_id_format: str | None = None,
        legacy_sha1: bool = False,
        require_signed_requests: bool = False,
        first_party: bool = False,
        attributes: tuple[str, ...] = (),
        require_mfa: bool = False,
        replace: bool = False,
        actor: Actor | None = None,
    ) -> ServiceProvider:
        if not _NAME.match(name):
            raise InvalidInput("an SP name is lower-case letters, digits, '.', '_' or '-'")
        if not domain.strip():
            raise InvalidInput("an SP needs a policy domain (--domain)")
        unknown = sorted(set(attributes) - set(ATTRIBUTE_URIS))
        if unknown:
            known = ", ".join(ATTRIBUTE_URIS)
            raise InvalidInput(f"unknown attribute(s) {', '.join(unknown)} (known: {known})")
        offered = parse_sp_metadata(metadata_xml).name_id_formats
        chosen = name_id_format or _preferred_format(offered)
        if chosen not in NAME_ID_FORMATS:
            raise InvalidInput(f"NameID format must be one of {', '.join(NAME_ID_FORMATS)}")
        existing = self._store.get(name)
        if existing is not None and not replace:
            raise Conflict(f"an SP named {name!r} exists already (use --replace)")
        now = self._clock.now()
        sp = ServiceProvider(
            name=name,
            domain=domain.strip(),
            metadata_xml=metadata_xml,
            name_id_format=chosen,
            legacy_sha1=legacy_sha1,
            require_signed_requests=require_signed_requests,
            first_party=first_party,
            attributes=tuple(attributes),
            created_at=existing.created_at if existing is not None else now,
            updated_at=now,
            require_mfa=require_mfa,
        )
        with self._uow.atomic() as tx:
            if existing is not None:
                self._store.replace(sp.record())
            else:
                self._store.insert(sp.record())
            tx.record(
                EventType.SAML_SP_ADDED,
                actor=actor or Actor("admin"),
                target=name,
                details={
                    "entity_id": sp.entity_id,
                    "domain": sp.domain,
                    "name_id_format": chosen,
                    "legacy_sha1": legacy_sha1,
                    "first_party": first_party,
                    "attributes": list(attributes),
                    "require_mfa": require_mfa,
                    "encrypted_assertions": sp.encrypter is not None,
                    "replaced": existing is not None,
                },
            )
        return sp

    def remove(self, name: str, *, actor: Actor | None = None) -> None:
        with self._uow.atomic() as tx:
            if not self._store.delete(name):
                raise NotFound(f"no SAML SP named {name!r}")
            tx.record(EventType.SAML_SP_REMOVED, actor=actor or Actor("admin"), target=name)

    def get(self, name: str) -> ServiceProvider | None:
        return self._provider(self._store.get(name))

    def by_entity_id(self, entity_id: str) -> ServiceProvider | None:
        return self._provider(self._store.by_entity_id(entity_id))

    def list(self) -> Sequence[ServiceProvider]:
        return [sp for sp in map(self._provider, self._store.all()) if sp is not None]

    def version(self) -> str:
        return self._store.version()


def _preferred_format(offered: Sequence[str]) -> str:
    """The first of the SP's own NameIDFormats that idhub supports; persistent otherwise."""
    by_uri = {uri: short for short, uri in NAME_ID_FORMATS.items()}
    return next((by_uri[uri] for uri in offered if uri in by_uri), "persistent")
