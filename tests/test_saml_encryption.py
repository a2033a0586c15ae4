"""Encrypted assertions: an SP whose metadata publishes an encryption key (python3-saml with
`wantAssertionsEncrypted`) gets its signed assertion encrypted to that key, decrypts it with its
private key and accepts it; the cipher follows the SP's `EncryptionMethod`; another key cannot
read it; an unreadable encryption certificate is refused when the SP is added."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator

import httpx
import pytest
import xmlsec

from idhub.errors import InvalidInput
from tests.conftest import LiveServer
from tests.saml_sp import SamlSp, auto_post, running_sp
from tests.sso_support import make_user
from tests.test_saml_sso import PASSWORD, sign_in

AES128_CBC = "http://www.w3.org/2001/04/xmlenc#aes128-cbc"
AES256_GCM = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
ENCRYPTION_KEY = re.compile(r'(<md:KeyDescriptor use="encryption">.*?)(</md:KeyDescriptor>)', re.S)


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    make_user(live.services, "alice", PASSWORD, email="alice@example.com", employee_id="E7")
    return live


@pytest.fixture
def sp(idhub: LiveServer) -> Iterator[SamlSp]:
    with running_sp(idhub.url, want_encrypted=True) as sp:
        yield sp


def _response(idhub: LiveServer, sp: SamlSp) -> tuple[dict[str, str], str]:
    with httpx.Client(base_url=idhub.url) as client:
        _, fields = auto_post(sign_in(client, client.get(sp.login_url())).text)
    return fields, base64.b64decode(fields["SAMLResponse"]).decode()


def test_the_sp_decrypts_and_accepts_an_encrypted_assertion(idhub: LiveServer, sp: SamlSp) -> None:
    metadata = sp.metadata()
    assert 'use="encryption"' in metadata
    idhub.services.saml_sps.add("erp", metadata_xml=metadata, domain="erp", first_party=True)
    fields, xml = _response(idhub, sp)
    assert "EncryptedAssertion" in xml and AES256_GCM in xml
    assert "rsa-oaep-mgf1p" in xml
    # Nothing of the person travels in clear; the response itself is still signed.
    assert ">alice<" not in xml and ">E7<" not in xml and "<ns1:Assertion" not in xml
    assert xml.count("SignatureValue>") == 2
    verdict = sp.consume(fields)
    assert verdict["ok"], verdict
    assert verdict["friendly"]["uid"] == ["alice"]
    assert verdict["friendly"]["employeeNumber"] == ["E7"]
    assert not sp.consume(fields)["ok"]


def test_the_cipher_follows_the_sps_encryption_method(idhub: LiveServer, sp: SamlSp) -> None:
    metadata = ENCRYPTION_KEY.sub(
        rf'\1<md:EncryptionMethod Algorithm="{AES128_CBC}"/>\2', sp.metadata(), count=1
    )
    assert AES128_CBC in metadata
    idhub.services.saml_sps.add("erp", metadata_xml=metadata, domain="erp", first_party=True)
    fields, xml = _response(idhub, sp)
    assert AES128_CBC in xml and AES256_GCM not in xml
    verdict = sp.consume(fields)
    assert verdict["ok"], verdict


def test_another_key_cannot_read_it(idhub: LiveServer, sp: SamlSp) -> None:
    idhub.services.saml_sps.add("erp", metadata_xml=sp.metadata(), domain="erp", first_party=True)
    fields, _ = _response(idhub, sp)
    mallory = SamlSp(
        idp_url=sp.idp_url, port=sp.port, key_name="mallory", want_encrypted=True,
        seen_request_ids=dict(sp.seen_request_ids),
    )  # fmt: skip
    # The toolkit lets libxmlsec1's refusal out of `process_response` as it is.
    with pytest.raises(xmlsec.Error, match="failed to decrypt"):
        mallory.consume(fields)
    assert sp.consume(fields)["ok"]


def test_an_sp_without_an_encryption_key_gets_a_plain_signed_assertion(
    idhub: LiveServer,
) -> None:
    with running_sp(idhub.url) as plain:
        assert 'use="encryption"' not in plain.metadata()
        idhub.services.saml_sps.add(
            "erp", metadata_xml=plain.metadata(), domain="erp", first_party=True
        )
        fields, xml = _response(idhub, plain)
        assert "EncryptedAssertion" not in xml and ">alice<" in xml
        assert plain.consume(fields)["ok"]


def test_an_unreadable_encryption_certificate_is_refused_at_add(
    idhub: LiveServer, sp: SamlSp
) -> None:
    broken = re.sub(
        r'(<md:KeyDescriptor use="encryption">.*?<ds:X509Certificate>)[^<]+',
        r"\1bm90IGEgY2VydGlmaWNhdGU=",
        sp.metadata(),
        count=1,
        flags=re.S,
    )
    assert "bm90IGEgY2VydGlmaWNhdGU=" in broken
    with pytest.raises(InvalidInput, match="encryption certificate"):
        idhub.services.saml_sps.add("erp", metadata_xml=broken, domain="erp")
    assert idhub.services.saml_sps.get("erp") is None


def test_an_encryption_certificate_without_an_rsa_key_is_refused_at_add(
    idhub: LiveServer, sp: SamlSp
) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sp-ec")])
    start = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    metadata = re.sub(
        r'(<md:KeyDescriptor use="encryption">.*?<ds:X509Certificate>)[^<]+',
        lambda m: m.group(1) + der,
        sp.metadata(),
        count=1,
        flags=re.S,
    )
    assert der in metadata
    with pytest.raises(InvalidInput, match="RSA key"):
        idhub.services.saml_sps.add("erp", metadata_xml=metadata, domain="erp")
