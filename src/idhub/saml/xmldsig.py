"""Enveloped XML signatures made in process by libxmlsec1 (the `xmlsec` binding, over lxml).

pysaml2 signs by starting the `xmlsec1` binary once per signature, ~55 ms of process start-up
around a ~1 ms RSA signature; a response carries two. Here the same library signs in this
process with the key already opened: exclusive c14n, enveloped-signature transform, RSA-SHA256
with SHA-256 digests (RSA-SHA1 / SHA-1 only for an SP marked legacy, decided by the caller).

The signature is written as a template where the message wants it (after its `Issuer`, as the
SAML schema orders it) with the signing certificate in `KeyInfo`; libxmlsec1 fills in the
digest and the signature value.

`verify_enveloped` checks an SP's enveloped signature the way `xmlsec1 --verify` did for
pysaml2 (`--id-attr:ID <element>`, `--node-id`, the key from the SP's metadata certificate
only), in process.
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


class SignatureInvalid(Exception):
    """The enveloped signature does not verify (or is not where it must be)."""


def verify_enveloped(
    xml: bytes, *, certificate_pem: bytes, node: tuple[str, str], node_id: str | None
) -> None:
    """Verifies the `Signature` that is a direct child of the `node` element (namespace, local
    name) whose `ID` is `node_id` (the document's root element when None), with the key of
    `certificate_pem` and nothing else (never a key the message carries). IDs are taken from
    `node` elements only; the same ID twice is refused (signature wrapping). The caller
    (pysaml2) has checked the signature's shape: one `#ID` reference to that element,
    enveloped and exclusive-c14n transforms, no `Object`. Raises `SignatureInvalid`."""
    try:
        root = etree.fromstring(xml, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SignatureInvalid(f"not XML: {exc}") from exc
    tag = f"{{{node[0]}}}{node[1]}"
    context = xmlsec.SignatureContext()
    ids: dict[str, etree._Element] = {}
    for element in root.iter(tag):
        value = element.get("ID")
        if value is None:
            continue
        if value in ids:
            raise SignatureInvalid(f"the ID {value!r} is used twice")
        ids[value] = element
        context.register_id(element, "ID")
    start = root if node_id is None else ids.get(node_id)
    if start is None or start.tag != tag:
        raise SignatureInvalid("the signed element is not in the message")
    signature = start.find(f"{{{DS}}}Signature")
    if signature is None:
        raise SignatureInvalid("no signature on the signed element")
    try:
        context.key = xmlsec.Key.from_memory(certificate_pem, xmlsec.constants.KeyDataFormatCertPem)
        context.verify(signature)
    except xmlsec.Error as exc:
        raise SignatureInvalid(f"the signature does not verify: {exc}") from exc
