"""How idhub fits pysaml2 (which parses requests and builds logout messages): the URI attribute
names, and what it must not keep in memory. Kept apart so `idp.py` reads as the IdP's own
rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saml2.attribute_converter import AttributeConverter
from saml2.sigver import XmlsecError

from idhub.saml.attributes import ATTRIBUTE_URIS, NAME_FORMAT_URI
from idhub.saml.xmldsig import SignatureInvalid, verify_enveloped


def attribute_converter() -> AttributeConverter:
    converter = AttributeConverter(NAME_FORMAT_URI)
    converter.from_dict(
        {
            "identifier": NAME_FORMAT_URI,
            "fro": {uri: name for name, uri in ATTRIBUTE_URIS.items()},
            "to": dict(ATTRIBUTE_URIS),
        }
    )
    return converter


class NoAssertionStore:
    """pysaml2 keeps every issued assertion in process memory for AssertionIDRequest / AuthnQuery,
    which idhub does not offer: a long-running server would only grow. Nothing is kept."""

    def store_assertion(self, assertion: Any, to_sign: Any) -> None:
        return None


class InProcessVerification:
    """pysaml2's crypto backend with signature verification made in process
    (`xmldsig.verify_enveloped`) instead of by running the `xmlsec1` binary (~30-55 ms a
    request). pysaml2 still decides which certificates to try (the SP's metadata only), checks
    the signature's shape first and the certificate after; anything else it might ask of a
    backend goes to the one this wraps (idhub signs and encrypts itself, so nothing does)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def validate_signature(
        self,
        signedtext: str | bytes,
        cert_file: str,
        cert_type: str,
        node_name: str,
        node_id: str | None,
    ) -> bool:
        if cert_type != "pem":
            raise XmlsecError(f"certificate type {cert_type!r} is not accepted")
        namespace, _, local = node_name.rpartition(":")
        data = signedtext.encode("utf-8") if isinstance(signedtext, str) else signedtext
        try:
            verify_enveloped(
                data,
                certificate_pem=Path(cert_file).read_bytes(),
                node=(namespace, local),
                node_id=node_id,
            )
        except SignatureInvalid as exc:
            # What pysaml2 expects of a failed check: it tries the SP's next certificate.
            raise XmlsecError(str(exc)) from exc
        return True
