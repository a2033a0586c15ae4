"""The `Response` and `Assertion` idhub sends to an SP's AssertionConsumerService, and the
`LogoutRequest` it sends an SP's back-channel SingleLogoutService, built as XML text and signed
in process (`saml/xmldsig.py`).

The shape is the one pysaml2 wrote before the signing moved in process (element order, the
`ns0`/`ns1`/`ns2` prefixes for protocol, assertion and xmldsig, `xsi:type="xs:string"`
attribute values), so SPs that were configured against it see the same messages:

    Response(ID, InResponseTo?, Version, IssueInstant, Destination)
      Issuer, Signature, Status
      Assertion(ID, IssueInstant) | EncryptedAssertion
        Issuer, Signature,
        Subject(NameID, SubjectConfirmation bearer(NotOnOrAfter, Recipient, InResponseTo?)),
        Conditions(NotBefore, NotOnOrAfter, AudienceRestriction(Audience)),
        AuthnStatement(AuthnInstant, SessionIndex, AuthnContextClassRef),
        AttributeStatement(Attribute(Name uri, NameFormat, FriendlyName)*)

The assertion is signed first, then (encrypted when the SP asks for it, then) the response,
whose signature covers the signed assertion.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from idhub.saml.attributes import ATTRIBUTE_URIS, NAME_FORMAT_URI, NameIdValue
from idhub.saml.xmldsig import DS, XmlSigner, parse, serialize, signature_template

PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
ASSERTION = "urn:oasis:names:tc:SAML:2.0:assertion"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XS = "http://www.w3.org/2001/XMLSchema"
ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
STATUS_RESPONDER = "urn:oasis:names:tc:SAML:2.0:status:Responder"
STATUS_REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
_ROOT_NS = f'xmlns:ns0="{PROTOCOL}" xmlns:ns1="{ASSERTION}" xmlns:ns2="{DS}" xmlns:xsi="{XSI}"'
# Characters XML 1.0 cannot carry at all (a display name from a directory may hold one).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def new_id() -> str:
    """160 random bits; an NCName (never starts with a digit)."""
    return "_" + secrets.token_hex(20)


def instant(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", value))


def _attr(value: str) -> str:
    return quoteattr(_NOT_XML.sub("\ufffd", value))


@dataclass(frozen=True)
class Signing:
    """How this SP's messages are signed."""

    signer: XmlSigner
    certificate_b64: str
    sign_alg: str
    digest_alg: str

    def template(self, reference_id: str) -> str:
        return signature_template(
            prefix="ns2",
            reference_id=reference_id,
            sign_alg=self.sign_alg,
            digest_alg=self.digest_alg,
            certificate_b64=self.certificate_b64,
        )


@dataclass(frozen=True)
class Assertion:
    issuer: str
    audience: str
    recipient: str
    in_response_to: str | None
    name_id: NameIdValue
    attributes: Mapping[str, Sequence[str]]
    auth_time: float
    session_index: str
    authn_class: str
    now: float
    ttl: int


def _issuer(entity_id: str) -> str:
    return f'<ns1:Issuer Format="{ENTITY}">{_text(entity_id)}</ns1:Issuer>'


def _attribute_statement(attributes: Mapping[str, Sequence[str]]) -> str:
    parts = []
    for friendly, values in attributes.items():
        uri = ATTRIBUTE_URIS.get(friendly, friendly)
        rendered = "".join(
            f'<ns1:AttributeValue xmlns:xs="{XS}" xsi:type="xs:string">{_text(v)}'
            "</ns1:AttributeValue>"
            for v in values
        )
        parts.append(
            f'<ns1:Attribute Name={_attr(uri)} NameFormat="{NAME_FORMAT_URI}" '
            f"FriendlyName={_attr(friendly)}>{rendered}</ns1:Attribute>"
        )
    return f"<ns1:AttributeStatement>{''.join(parts)}</ns1:AttributeStatement>" if parts else ""


def _assertion_xml(a: Assertion, assertion_id: str, signing: Signing) -> str:
    until = instant(a.now + a.ttl)
    answers = f" InResponseTo={_attr(a.in_response_to)}" if a.in_response_to is not None else ""
    return (
        f'<ns1:Assertion Version="2.0" ID="{assertion_id}" IssueInstant="{instant(a.now)}">'
        f"{_issuer(a.issuer)}{signing.template(assertion_id)}"
        f"<ns1:Subject><ns1:NameID Format={_attr(a.name_id.format)}>{_text(a.name_id.value)}"
        f'</ns1:NameID><ns1:SubjectConfirmation Method="{BEARER}">'
        f'<ns1:SubjectConfirmationData NotOnOrAfter="{until}" Recipient={_attr(a.recipient)}'
        f"{answers}/></ns1:SubjectConfirmation></ns1:Subject>"
        f'<ns1:Conditions NotBefore="{instant(a.now)}" NotOnOrAfter="{until}">'
        f"<ns1:AudienceRestriction><ns1:Audience>{_text(a.audience)}</ns1:Audience>"
        "</ns1:AudienceRestriction></ns1:Conditions>"
        f'<ns1:AuthnStatement AuthnInstant="{instant(a.auth_time)}" '
        f"SessionIndex={_attr(a.session_index)}><ns1:AuthnContext>"
        f"<ns1:AuthnContextClassRef>{_text(a.authn_class)}</ns1:AuthnContextClassRef>"
        "</ns1:AuthnContext></ns1:AuthnStatement>"
        f"{_attribute_statement(a.attributes)}</ns1:Assertion>"
    )


def _status(code: str, sub_code: str | None, message: str | None) -> str:
    inner = f'<ns0:StatusCode Value="{sub_code}"/>' if sub_code else ""
    said = f"<ns0:StatusMessage>{_text(message)}</ns0:StatusMessage>" if message else ""
    return f'<ns0:Status><ns0:StatusCode Value="{code}">{inner}</ns0:StatusCode>{said}</ns0:Status>'


def _response_open(
    response_id: str, *, in_response_to: str | None, destination: str, now: float
) -> str:
    answers = f" InResponseTo={_attr(in_response_to)}" if in_response_to is not None else ""
    return (
        f'<ns0:Response {_ROOT_NS} ID="{response_id}"{answers} Version="2.0" '
        f'IssueInstant="{instant(now)}" Destination={_attr(destination)}>'
    )


Encrypt = Callable[[etree._Element], None]


def build_response(
    assertion: Assertion, signing: Signing, *, encrypt: Encrypt | None = None
) -> tuple[str, str]:
    """(signed Response XML, assertion id). `encrypt` replaces the signed assertion element in
    the tree by an `EncryptedAssertion` (SAML core 2.7.3.1: sign, then encrypt)."""
    response_id, assertion_id = new_id(), new_id()
    xml = (
        _response_open(
            response_id,
            in_response_to=assertion.in_response_to,
            destination=assertion.recipient,
            now=assertion.now,
        )
        + _issuer(assertion.issuer)
        + signing.template(response_id)
        + _status(STATUS_SUCCESS, None, None)
        + _assertion_xml(assertion, assertion_id, signing)
        + "</ns0:Response>"
    )
    root = parse(xml)
    signed_assertion = root.find(f"{{{ASSERTION}}}Assertion")
    assert signed_assertion is not None  # written just above
    signing.signer.sign(signed_assertion)
    if encrypt is not None:
        encrypt(signed_assertion)
    signing.signer.sign(root)
    return serialize(root), assertion_id


def build_error_response(
    signing: Signing,
    *,
    issuer: str,
    destination: str,
    in_response_to: str | None,
    sub_status: str,
    message: str,
    now: float,
) -> str:
    """A signed `Responder` response with `sub_status` (e.g. NoPassive) and no assertion."""
    response_id = new_id()
    xml = (
        _response_open(response_id, in_response_to=in_response_to, destination=destination, now=now)
        + _issuer(issuer)
        + signing.template(response_id)
        + _status(STATUS_RESPONDER, sub_status, message)
        + "</ns0:Response>"
    )
    root = parse(xml)
    signing.signer.sign(root)
    return serialize(root)


def build_logout_request(
    signing: Signing,
    *,
    issuer: str,
    destination: str,
    name_id: NameIdValue,
    session_index: str,
    now: float,
) -> str:
    """A signed `LogoutRequest` telling an SP that the session `session_index` names ended."""
    request_id = new_id()
    xml = (
        f'<ns0:LogoutRequest {_ROOT_NS} ID="{request_id}" Version="2.0" '
        f'IssueInstant="{instant(now)}" Destination={_attr(destination)}>'
        + _issuer(issuer)
        + signing.template(request_id)
        + f"<ns1:NameID Format={_attr(name_id.format)}>{_text(name_id.value)}</ns1:NameID>"
        + f"<ns0:SessionIndex>{_text(session_index)}</ns0:SessionIndex>"
        + "</ns0:LogoutRequest>"
    )
    root = parse(xml)
    signing.signer.sign(root)
    return serialize(root)


def build_logout_response(
    signing: Signing | None,
    *,
    issuer: str,
    destination: str,
    in_response_to: str | None,
    success: bool,
    now: float,
) -> str:
    """The `LogoutResponse` to an SP's LogoutRequest: enveloped-signed for the POST binding;
    unsigned (`signing` None) for the Redirect binding, whose signature covers the query."""
    response_id = new_id()
    answers = f" InResponseTo={_attr(in_response_to)}" if in_response_to is not None else ""
    status = (
        _status(STATUS_SUCCESS, None, None)
        if success
        else _status(STATUS_RESPONDER, STATUS_REQUEST_DENIED, None)
    )
    xml = (
        f'<ns0:LogoutResponse {_ROOT_NS} ID="{response_id}"{answers} Version="2.0" '
        f'IssueInstant="{instant(now)}" Destination={_attr(destination)}>'
        + _issuer(issuer)
        + (signing.template(response_id) if signing is not None else "")
        + status
        + "</ns0:LogoutResponse>"
    )
    if signing is None:
        return xml
    root = parse(xml)
    signing.signer.sign(root)
    return serialize(root)
