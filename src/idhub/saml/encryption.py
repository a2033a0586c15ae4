"""Encrypted assertions (SAML core 2.3.4, XML Encryption) for SPs whose metadata publishes an
encryption key.

The signed assertion is encrypted whole into an `EncryptedAssertion`: a fresh AES key per
assertion (AES-256-GCM unless the SP's metadata asks, in its `EncryptionMethod`s, only for
another of AES-128-GCM, AES-256-CBC or AES-128-CBC), that key transported RSA-OAEP
(`rsa-oaep-mgf1p`) under the SP's certificate. The response around it is signed after, so an SP
checks the response's signature, decrypts, then checks the assertion's.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from idhub.errors import InvalidInput

XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
AES256_GCM = XENC11 + "aes256-gcm"
AES128_GCM = XENC11 + "aes128-gcm"
AES256_CBC = XENC + "aes256-cbc"
AES128_CBC = XENC + "aes128-cbc"
RSA_OAEP = XENC + "rsa-oaep-mgf1p"
# algorithm URI -> (xmlsec transform, key bits), in idhub's order of preference
_CIPHERS = {
    AES256_GCM: (xmlsec.constants.TransformAes256Gcm, 256),
    AES128_GCM: (xmlsec.constants.TransformAes128Gcm, 128),
    AES256_CBC: (xmlsec.constants.TransformAes256Cbc, 256),
    AES128_CBC: (xmlsec.constants.TransformAes128Cbc, 128),
}
ASSERTION_NS = "urn:oasis:names:tc:SAML:2.0:assertion"


def choose_cipher(offered: Sequence[str]) -> str:
    """The data cipher for an SP: the first of its metadata's `EncryptionMethod`s idhub
    supports, else AES-256-GCM (also when it lists none)."""
    return next((uri for uri in offered if uri in _CIPHERS), AES256_GCM)


def _pem(certificate_b64: str) -> bytes:
    body = "\n".join(certificate_b64[i : i + 64] for i in range(0, len(certificate_b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode("ascii")


class AssertionEncrypter:
    """Encrypts for one SP certificate (opened once per SP version)."""

    def __init__(self, certificate_b64: str, *, cipher: str = AES256_GCM) -> None:
        try:
            der = base64.b64decode(certificate_b64, validate=True)
            public = x509.load_der_x509_certificate(der).public_key()
            self._key = xmlsec.Key.from_memory(
                _pem(certificate_b64), xmlsec.constants.KeyDataFormatCertPem
            )
        except (ValueError, xmlsec.Error) as exc:
            raise InvalidInput("the SP's encryption certificate cannot be read") from exc
        if not isinstance(public, rsa.RSAPublicKey):
            # RSA-OAEP key transport is all idhub offers (and all SAML SPs commonly take).
            raise InvalidInput("the SP's encryption certificate must hold an RSA key")
        if cipher not in _CIPHERS:
            raise InvalidInput(f"unsupported assertion cipher {cipher}")
        self.cipher = cipher
        # Making a keys manager costs ~15 ms (it loads the system's trust store): once per SP.
        # It is only read while encrypting; the lock keeps libxmlsec1 from being asked to
        # look a key up in it from two threads at once.
        self._manager = xmlsec.KeysManager()
        self._manager.add_key(self._key)
        self._lock = threading.Lock()

    def __call__(self, assertion: etree._Element) -> None:
        """Replaces `assertion` (in its tree) by an `EncryptedAssertion` holding it."""
        transform, bits = _CIPHERS[self.cipher]
        parent = assertion.getparent()
        if parent is None:
            raise RuntimeError("the assertion must sit in its response")  # a builder mistake
        data = xmlsec.template.encrypted_data_create(
            parent, transform, type=xmlsec.constants.TypeEncElement, ns="xenc"
        )
        xmlsec.template.encrypted_data_ensure_cipher_value(data)
        key_info = xmlsec.template.encrypted_data_ensure_key_info(data, ns="ds")
        encrypted_key = xmlsec.template.add_encrypted_key(
            key_info, xmlsec.constants.TransformRsaOaep
        )
        xmlsec.template.encrypted_data_ensure_cipher_value(encrypted_key)
        context = xmlsec.EncryptionContext(self._manager)
        context.key = xmlsec.Key.generate(
            xmlsec.constants.KeyDataAes, bits, xmlsec.constants.KeyDataTypeSession
        )
        with self._lock:
            # encrypt_xml puts the EncryptedData where the assertion was.
            encrypted = context.encrypt_xml(data, assertion)
        wrapper = etree.Element(f"{{{ASSERTION_NS}}}EncryptedAssertion")
        encrypted.addprevious(wrapper)
        wrapper.append(encrypted)
