"""idhub's own IdP metadata (served at `/saml/metadata`, the entity id by default)."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from idhub.saml.keys import pem_body
from idhub.saml.metadata import BINDING_POST, BINDING_REDIRECT
from idhub.saml.registry import NAME_ID_FORMATS


def render_idp_metadata(
    *, entity_id: str, certificates: list[str], sso: str, slo: str, want_signed: bool
) -> str:
    keys = "".join(
        '<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>'
        f"{pem_body(pem)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        for pem in certificates
    )
    slos = "".join(
        f"<md:SingleLogoutService Binding={quoteattr(b)} Location={quoteattr(slo)}/>"
        for b in (BINDING_REDIRECT, BINDING_POST)
    )
    formats = "".join(f"<md:NameIDFormat>{f}</md:NameIDFormat>" for f in NAME_ID_FORMATS.values())
    ssos = "".join(
        f"<md:SingleSignOnService Binding={quoteattr(b)} Location={quoteattr(sso)}/>"
        for b in (BINDING_REDIRECT, BINDING_POST)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID={quoteattr(entity_id)}>'
        f'<md:IDPSSODescriptor WantAuthnRequestsSigned="{str(want_signed).lower()}" '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f"{keys}{slos}{formats}{ssos}</md:IDPSSODescriptor></md:EntityDescriptor>"
    )
