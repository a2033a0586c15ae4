"""What a service provider's SAML metadata says, read once when the SP is registered.

Only the parts idhub acts on are kept: the entity id (the audience of its assertions), the
AssertionConsumerService and SingleLogoutService endpoints (the only places responses and logout
messages are ever sent), its signing and encryption certificates, and whether it signs its
AuthnRequests.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from defusedxml import ElementTree

from idhub.core.saml import BINDING_POST, BINDING_REDIRECT, BINDING_SOAP, Endpoint
from idhub.errors import InvalidInput

__all__ = ["BINDING_POST", "BINDING_REDIRECT", "BINDING_SOAP", "Endpoint", "SpMetadata"]

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
MAX_METADATA = 1_000_000


@dataclass(frozen=True)
class SpMetadata:
    entity_id: str
    acs: tuple[Endpoint, ...]
    slo: tuple[Endpoint, ...]
    signing_certs: tuple[str, ...]  # base64 DER, as in the metadata
    # Only keys marked `use="encryption"`: many SPs publish one unmarked key and never decrypt.
    encryption_certs: tuple[str, ...]
    authn_requests_signed: bool
    name_id_formats: tuple[str, ...]
    # The `EncryptionMethod` algorithms listed with its encryption keys, in its order.
    encryption_methods: tuple[str, ...] = ()

    def default_acs(self) -> Endpoint:
        """The ACS for responses nobody asked a particular one for (IdP-initiated, or an
        AuthnRequest naming none): the default one, else the lowest index, else the first."""
        posts = [e for e in self.acs if e.binding == BINDING_POST] or list(self.acs)
        for endpoint in posts:
            if endpoint.is_default:
                return endpoint
        indexed = [e for e in posts if e.index is not None]
        return min(indexed, key=lambda e: e.index or 0) if indexed else posts[0]

    def acs_by_url(self, url: str) -> Endpoint | None:
        return next((e for e in self.acs if e.location == url), None)

    def acs_by_index(self, index: int) -> Endpoint | None:
        return next((e for e in self.acs if e.index == index), None)

    def slo_for(self, *bindings: str) -> Endpoint | None:
        """The first SLO endpoint with one of `bindings`, in the order of preference given."""
        for binding in bindings:
            found = next((e for e in self.slo if e.binding == binding), None)
            if found is not None:
                return found
        return None


def _endpoints(sp: Element, tag: str) -> tuple[Endpoint, ...]:
    found = []
    for node in sp.findall(f"{{{MD}}}{tag}"):
        location, binding = node.get("Location", ""), node.get("Binding", "")
        if not location or not binding:
            continue
        index = node.get("index")
        found.append(
            Endpoint(
                binding=binding,
                location=location,
                index=int(index) if index is not None and index.isdigit() else None,
                is_default=node.get("isDefault", "").lower() in ("true", "1"),
            )
        )
    return tuple(found)


def _certs(sp: Element, use: str, *, unmarked: bool = True) -> tuple[str, ...]:
    found = []
    for key in sp.findall(f"{{{MD}}}KeyDescriptor"):
        if key.get("use", use if unmarked else "") != use:
            continue
        for cert in key.iter(f"{{{DS}}}X509Certificate"):
            text = "".join((cert.text or "").split())
            if text:
                found.append(text)
    return tuple(found)


def parse_sp_metadata(xml: str) -> SpMetadata:
    """Reads an SP's EntityDescriptor; raises `InvalidInput` when it is not usable."""
    if len(xml) > MAX_METADATA:
        raise InvalidInput("SAML metadata is too large")
    try:
        root = ElementTree.fromstring(xml)
    except Exception as exc:  # defusedxml raises several unrelated types
        raise InvalidInput(f"SAML metadata is not well-formed XML: {exc}") from exc
    if root.tag == f"{{{MD}}}EntitiesDescriptor":
        entities = root.findall(f"{{{MD}}}EntityDescriptor")
        if len(entities) != 1:
            raise InvalidInput("SAML metadata must describe exactly one service provider")
        root = entities[0]
    if root.tag != f"{{{MD}}}EntityDescriptor":
        raise InvalidInput("SAML metadata has no EntityDescriptor")
    entity_id = root.get("entityID", "")
    sp = root.find(f"{{{MD}}}SPSSODescriptor")
    if not entity_id or sp is None:
        raise InvalidInput("SAML metadata has no entityID or no SPSSODescriptor")
    acs = _endpoints(sp, "AssertionConsumerService")
    if not any(e.binding == BINDING_POST for e in acs):
        raise InvalidInput("the SP's metadata lists no HTTP-POST AssertionConsumerService")
    formats = tuple((n.text or "").strip() for n in sp.findall(f"{{{MD}}}NameIDFormat") if n.text)
    return SpMetadata(
        entity_id=entity_id,
        acs=acs,
        slo=_endpoints(sp, "SingleLogoutService"),
        signing_certs=_certs(sp, "signing"),
        encryption_certs=_certs(sp, "encryption", unmarked=False),
        authn_requests_signed=sp.get("AuthnRequestsSigned", "").lower() in ("true", "1"),
        name_id_formats=formats,
        encryption_methods=_encryption_methods(sp),
    )


def _encryption_methods(sp: Element) -> tuple[str, ...]:
    return tuple(
        method.get("Algorithm", "")
        for key in sp.findall(f"{{{MD}}}KeyDescriptor")
        if key.get("use") == "encryption"
        for method in key.findall(f"{{{MD}}}EncryptionMethod")
        if method.get("Algorithm")
    )
