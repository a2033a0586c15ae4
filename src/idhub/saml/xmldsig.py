"""Enveloped XML signatures made in process by libxmlsec1 (the `xmlsec` binding, over lxml).

pysaml2 signs by starting the `xmlsec1` binary once per signature, ~55 ms of process start-up
around a ~1 ms RSA signature; a response carries two. Here the same library signs in this
process with the key already opened: exclusive c14n, enveloped-signature transform, RSA-SHA256
with SHA-256 digests (RSA-SHA1 / SHA-1 only for an SP marked legacy, decided by the caller).

The signature is written as a template where the message wants it (after its `Issuer`, as the
SAML schema orders it) with the signing certificate in `KeyInfo`; libxmlsec1 fills in the
digest and the signature value.
"""

from __future__ import annotations

import xmlsec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

DS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"

# Parsing only XML idhub wrote itself; still, never entities nor the network.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)


def signature_template(
    *, prefix: str, reference_id: str, sign_alg: str, digest_alg: str, certificate_b64: str
) -> str:
    """An empty `Signature` over the element whose `ID` is `reference_id` (the namespace
    `prefix` is declared on the message's root)."""
    p = prefix
    return (
        f"<{p}:Signature><{p}:SignedInfo>"
        f'<{p}:CanonicalizationMethod Algorithm="{EXC_C14N}"/>'
        f'<{p}:SignatureMethod Algorithm="{sign_alg}"/>'
        f'<{p}:Reference URI="#{reference_id}"><{p}:Transforms>'
        f'<{p}:Transform Algorithm="{ENVELOPED}"/><{p}:Transform Algorithm="{EXC_C14N}"/>'
        f"</{p}:Transforms>"
        f'<{p}:DigestMethod Algorithm="{digest_alg}"/><{p}:DigestValue/></{p}:Reference>'
        f"</{p}:SignedInfo><{p}:SignatureValue/>"
        f"<{p}:KeyInfo><{p}:X509Data><{p}:X509Certificate>{certificate_b64}"
        f"</{p}:X509Certificate></{p}:X509Data></{p}:KeyInfo></{p}:Signature>"
    )


def parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode("utf-8"), _PARSER)


def serialize(root: etree._Element) -> str:
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return data.decode("utf-8")


class XmlSigner:
    """One opened signing key (made once per key: opening a PEM costs more than a signature)."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._key = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatPem)

    def sign(self, element: etree._Element) -> None:
        """Fills in the `Signature` template that is a child of `element` (its `ID` is the
        reference). A context per call: libxmlsec1 contexts are not shared between threads."""
        signature = element.find(f"{{{DS}}}Signature")
        if signature is None:
            raise RuntimeError("no Signature template to fill")  # a builder mistake
        context = xmlsec.SignatureContext()
        context.key = self._key
        context.register_id(element, "ID")
        context.sign(signature)
