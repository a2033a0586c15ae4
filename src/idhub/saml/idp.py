"""The identity provider itself: pysaml2's `Server`, configured from idhub's settings, the SP
registry and the signing key, rebuilt when one of those changes.

Every response and assertion is signed RSA-SHA256 (RSA-SHA1 only for an SP marked legacy),
restricted to the SP's entity id, valid at most five minutes, sent only to an ACS the SP's
metadata lists, and answers (`InResponseTo`) the AuthnRequest it was asked with; each
AuthnRequest id is answered once and each assertion id is issued once, on every replica.
"""

from __future__ import annotations

import base64
import calendar
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from idhub.core.clock import Clock
from idhub.core.saml import BINDING_REDIRECT, BINDING_SOAP
from idhub.errors import SamlRequestRejected
from idhub.saml.attributes import NAME_FORMAT_URI, NameIdValue
from idhub.saml.keys import SamlKeys
from idhub.saml.metadata import BINDING_POST, Endpoint
from idhub.saml.metadata_idp import render_idp_metadata
from idhub.saml.registry import NAME_ID_FORMATS, ServiceProvider, SpRegistry
from idhub.saml.requests import (
    DIGEST_SHA1,
    DIGEST_SHA256,
    RSA_SHA1,
    RSA_SHA256,
    PendingRequest,
    check_algorithm,
    require_redirect_signature,
)

if TYPE_CHECKING:
    # pysaml2 (and the XML schema library under it) is imported when the first SAML message is
    # parsed, and lxml and libxmlsec1 (`responses`, `xmldsig`) when the first one is built or
    # signed, not when a worker starts: ~30 MB a worker that never sees SAML does not need.
    from saml2.server import Server

    from idhub.saml.responses import Signing
    from idhub.saml.xmldsig import XmlSigner

STATUS_NO_PASSIVE = "urn:oasis:names:tc:SAML:2.0:status:NoPassive"
STATUS_REQUEST_DENIED = "urn:oasis:names:tc:SAML:2.0:status:RequestDenied"
MAX_ASSERTION_TTL = 300
PASSWORD_CLASS = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"  # noqa: S105


class MessageIds(Protocol):
    def remember(self, message_id: str, *, kind: str, expires_at: float, now: float) -> bool:
        """False when the id was seen already (a replay)."""
        ...


@dataclass(frozen=True)
class SamlMessage:
    """What the browser carries to the SP: an auto-posted form, or a redirect (`location`)."""

    url: str
    field: str
    value: str
    relay_state: str | None = None
    location: str | None = None


@dataclass(frozen=True)
class LogoutRequestInfo:
    sp: ServiceProvider
    request: Any
    name_id: str
    relay_state: str | None
    binding: str


@dataclass(frozen=True)
class IdpSettings:
    entity_id: str
    base_url: str
    assertion_ttl: int = MAX_ASSERTION_TTL
    request_max_age: int = 300
    require_signed_requests: bool = False


class IdentityProvider:
    """`services.saml_idp`."""

    def __init__(
        self,
        settings: IdpSettings,
        *,
        registry: SpRegistry,
        keys: SamlKeys,
        message_ids: MessageIds,
        clock: Clock,
        xmlsec_binary: str | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._keys = keys
        self._ids = message_ids
        self._clock = clock
        self._xmlsec = xmlsec_binary
        self._lock = threading.Lock()
        self._built: tuple[tuple[str, str], Server] | None = None
        self._signer: tuple[str, XmlSigner] | None = None

    @property
    def entity_id(self) -> str:
        return self._settings.entity_id

    def endpoint(self, path: str) -> str:
        return self._settings.base_url.rstrip("/") + path

    # ------------------------------------------------------------------ the pysaml2 server

    def server(self) -> Server:
        material = self._keys.current()
        stamp = (self._registry.version(), material.kid)
        built = self._built
        if built is not None and built[0] == stamp:
            return built[1]
        with self._lock:
            if self._built is None or self._built[0] != stamp:
                self._built = (stamp, self._build(material.key_file, material.cert_file))
            return self._built[1]

    def _build(self, key_file: Any, cert_file: Any) -> Server:
        sso, slo = self.endpoint("/saml/sso"), self.endpoint("/saml/slo")
        ttl = min(self._settings.assertion_ttl, MAX_ASSERTION_TTL)
        config: dict[str, Any] = {
            "entityid": self.entity_id,
            "service": {
                "idp": {
                    "endpoints": {
                        "single_sign_on_service": [
                            (sso, BINDING_REDIRECT),
                            (sso, BINDING_POST),
                        ],
                        "single_logout_service": [
                            (slo, BINDING_REDIRECT),
                            (slo, BINDING_POST),
                        ],
                    },
                    "name_id_format": list(NAME_ID_FORMATS.values()),
                    # Checked per SP by this module (signature required or not, algorithm).
                    "want_authn_requests_signed": False,
                    "sign_response": True,
                    "sign_assertion": True,
                    "policy": {
                        "default": {
                            "lifetime": {"seconds": ttl},
                            "attribute_restrictions": None,
                            "name_form": NAME_FORMAT_URI,
                        }
                    },
                }
            },
            "key_file": str(key_file),
            "cert_file": str(cert_file),
            "metadata": {"inline": [sp.metadata_xml for sp in self._registry.list()]},
            "accepted_time_diff": self._settings.request_max_age,
            "signing_algorithm": RSA_SHA256,
            "digest_algorithm": DIGEST_SHA256,
        }
        if self._xmlsec:
            config["xmlsec_binary"] = self._xmlsec
        from saml2.config import IdPConfig
        from saml2.server import Server

        from idhub.saml._pysaml2 import InProcessVerification, NoAssertionStore, attribute_converter

        conf = IdPConfig()
        conf.load(config)
        conf.attribute_converters = [attribute_converter()]
        server = Server(config=conf)
        server.session_db = NoAssertionStore()
        # Enveloped signatures of POST-bound requests verified in process, not by `xmlsec1`.
        server.sec.crypto = InProcessVerification(server.sec.crypto)
        return server

    # ------------------------------------------------------------------ AuthnRequests

    def read_authn_request(
        self, *, binding: str, saml_request: str, relay_state: str | None, raw_query: str = ""
    ) -> PendingRequest:
        """Parses and checks an AuthnRequest; raises `SamlRequestRejected`."""
        server = self.server()
        try:
            parsed = server.parse_authn_request(saml_request, binding)
        except Exception as exc:  # pysaml2 raises many unrelated types for bad input
            raise SamlRequestRejected(f"the AuthnRequest is not acceptable: {exc}") from exc
        if parsed is None or parsed.message is None:
            raise SamlRequestRejected("the AuthnRequest is not acceptable")
        message = parsed.message
        issuer = message.issuer.text.strip() if message.issuer is not None else ""
        sp = self._registry.by_entity_id(issuer)
        if sp is None:
            raise SamlRequestRejected("the AuthnRequest comes from an unknown service provider")
        self._require_request_signature(sp, binding, message, raw_query, "SAMLRequest")
        self._require_recent(message)
        acs = self._acs_for(sp, message)
        return PendingRequest(
            sp=sp.name,
            request_id=str(message.id),
            acs_url=acs,
            force_authn=str(message.force_authn).lower() in ("true", "1"),
            is_passive=str(message.is_passive).lower() in ("true", "1"),
            relay_state=relay_state,
            issued_at=self._clock.now(),
        )

    def _require_request_signature(
        self,
        sp: ServiceProvider,
        binding: str,
        message: Any,
        raw_query: str,
        field: str,
        *,
        always: bool = False,
    ) -> None:
        must = (
            always
            or sp.require_signed_requests
            or sp.metadata.authn_requests_signed
            or self._settings.require_signed_requests
        )
        if binding == BINDING_REDIRECT:
            if must or "Signature=" in raw_query:
                require_redirect_signature(sp, raw_query, message=field)
            return
        signature = message.signature
        if signature is None:
            if must:
                raise SamlRequestRejected("the request is not signed")
            return
        # pysaml2 verified the enveloped signature against the SP's metadata while parsing.
        algorithm = signature.signed_info.signature_method.algorithm
        if not check_algorithm(sp, algorithm):
            raise SamlRequestRejected(f"signature algorithm {algorithm} is not accepted")

    def _require_recent(self, message: Any) -> None:
        """IssueInstant within `request_max_age` of now, either way (clock skew)."""
        from saml2.time_util import str_to_time

        try:
            issued = calendar.timegm(str_to_time(str(message.issue_instant)))
        except (TypeError, ValueError) as exc:
            raise SamlRequestRejected("the request has no valid IssueInstant") from exc
        if abs(self._clock.now() - issued) > self._settings.request_max_age:
            raise SamlRequestRejected("the request is too old (or from the future)")

    @staticmethod
    def _acs_for(sp: ServiceProvider, message: Any) -> str:
        """The ACS to answer at: the one asked for if the metadata lists it, never another."""
        if message.assertion_consumer_service_url:
            found = sp.metadata.acs_by_url(str(message.assertion_consumer_service_url))
            if found is None or found.binding != BINDING_POST:
                raise SamlRequestRejected("the ACS URL is not one the SP's metadata lists")
            return found.location
        index = message.assertion_consumer_service_index
        if index is not None:
            found = sp.metadata.acs_by_index(int(index))
            if found is None or found.binding != BINDING_POST:
                raise SamlRequestRejected("the ACS index is not one the SP's metadata lists")
            return found.location
        return sp.metadata.default_acs().location

    def idp_initiated(self, sp: ServiceProvider, relay_state: str | None) -> PendingRequest:
        return PendingRequest(
            sp=sp.name,
            request_id=None,
            acs_url=sp.metadata.default_acs().location,
            relay_state=relay_state,
            issued_at=self._clock.now(),
        )

    # ------------------------------------------------------------------ responses

    def respond(
        self,
        pending: PendingRequest,
        sp: ServiceProvider,
        *,
        name_id: NameIdValue,
        attributes: dict[str, list[str]],
        auth_time: float,
        session_index: str,
    ) -> tuple[SamlMessage, str]:
        """A signed response with a signed assertion; returns it with the assertion id. It
        stores nothing: the caller claims the ids with `claim` in the transaction that records
        the response, so a response that could not be recorded leaves its AuthnRequest
        answerable (the browser's retry works) and no id claimed."""
        from idhub.saml.responses import Assertion, build_response

        now = self._clock.now()
        ttl = min(self._settings.assertion_ttl, MAX_ASSERTION_TTL)
        xml, assertion_id = build_response(
            Assertion(
                issuer=self.entity_id,
                audience=sp.entity_id,
                recipient=pending.acs_url,
                in_response_to=pending.request_id,
                name_id=name_id,
                attributes=attributes,
                auth_time=auth_time,
                session_index=session_index,
                authn_class=PASSWORD_CLASS,
                now=now,
                ttl=ttl,
            ),
            self._signing(sp),
            encrypt=sp.encrypter,
        )
        encoded = base64.b64encode(xml.encode()).decode()
        return SamlMessage(pending.acs_url, "SAMLResponse", encoded, pending.relay_state), (
            assertion_id
        )

    def claim(self, pending: PendingRequest, sp: ServiceProvider, assertion_id: str) -> None:
        """Marks the AuthnRequest answered and the assertion id used (single use, on every
        replica); `SamlRequestRejected` if the request was answered already."""
        now = self._clock.now()
        ttl = min(self._settings.assertion_ttl, MAX_ASSERTION_TTL)
        if pending.request_id is not None and not self._ids.remember(
            f"authn:{sp.entity_id}:{pending.request_id}",
            kind="authn_request",
            expires_at=now + 2 * self._settings.request_max_age + 60,
            now=now,
        ):
            raise SamlRequestRejected("this AuthnRequest was answered already")
        if not self._ids.remember(
            f"assertion:{assertion_id}", kind="assertion", expires_at=now + ttl + 60, now=now
        ):
            raise SamlRequestRejected("assertion id collision")  # never expected

    def _signing(self, sp: ServiceProvider) -> Signing:
        from idhub.saml.responses import Signing
        from idhub.saml.xmldsig import XmlSigner

        material = self._keys.current()
        opened = self._signer
        if opened is None or opened[0] != material.kid:
            opened = (material.kid, XmlSigner(material.private_key))
            self._signer = opened
        sign_alg, digest_alg = self._algorithms(sp)
        return Signing(opened[1], material.certificate_b64, sign_alg, digest_alg)

    def refuse(self, pending: PendingRequest, sp: ServiceProvider, *, passive: bool) -> SamlMessage:
        """A signed error response (`NoPassive` for a passive request, else `RequestDenied`)."""
        from idhub.saml.responses import build_error_response

        xml = build_error_response(
            self._signing(sp),
            issuer=self.entity_id,
            destination=pending.acs_url,
            in_response_to=pending.request_id,
            sub_status=STATUS_NO_PASSIVE if passive else STATUS_REQUEST_DENIED,
            message="the request cannot be answered without the person",
            now=self._clock.now(),
        )
        encoded = base64.b64encode(xml.encode()).decode()
        return SamlMessage(pending.acs_url, "SAMLResponse", encoded, pending.relay_state)

    @staticmethod
    def _algorithms(sp: ServiceProvider) -> tuple[str, str]:
        return (RSA_SHA1, DIGEST_SHA1) if sp.legacy_sha1 else (RSA_SHA256, DIGEST_SHA256)

    # ------------------------------------------------------------------ single logout

    def read_logout_request(
        self, *, binding: str, saml_request: str, relay_state: str | None, raw_query: str = ""
    ) -> LogoutRequestInfo:
        try:
            parsed = self.server().parse_logout_request(saml_request, binding)
        except Exception as exc:  # pysaml2 raises many unrelated types for bad input
            raise SamlRequestRejected(f"the LogoutRequest is not acceptable: {exc}") from exc
        message = parsed.message if parsed is not None else None
        if message is None:
            raise SamlRequestRejected("the LogoutRequest is not acceptable")
        issuer = message.issuer.text.strip() if message.issuer is not None else ""
        sp = self._registry.by_entity_id(issuer)
        if sp is None:
            raise SamlRequestRejected("the LogoutRequest comes from an unknown service provider")
        # SAML profiles 4.4.4.1: a LogoutRequest must be authenticated; an SP that has a
        # signing key must sign it (else anyone could sign a person out of every system).
        self._require_request_signature(
            sp, binding, message, raw_query, "SAMLRequest", always=bool(sp.metadata.signing_certs)
        )
        self._require_recent(message)
        name_id = message.name_id.text.strip() if message.name_id is not None else ""
        return LogoutRequestInfo(sp, message, name_id, relay_state, binding)

    def logout_response(self, info: LogoutRequestInfo, *, success: bool) -> SamlMessage:
        """The LogoutResponse, sent back the way the SP's metadata asks (Redirect or POST)."""
        from idhub.saml.responses import build_logout_response

        endpoint = info.sp.metadata.slo_for(BINDING_REDIRECT, BINDING_POST)
        if endpoint is None:
            raise SamlRequestRejected("the SP's metadata lists no SingleLogoutService")
        url = endpoint.location
        # Built and signed here, never by pysaml2 (which signs by running the `xmlsec1`
        # binary): enveloped for POST; for Redirect the query is signed below, in process.
        post = endpoint.binding == BINDING_POST
        xml = build_logout_response(
            self._signing(info.sp) if post else None,
            issuer=self.entity_id,
            destination=url,
            in_response_to=getattr(info.request, "id", None),
            success=success,
            now=self._clock.now(),
        )
        if not post:
            http = self.server().apply_binding(
                BINDING_REDIRECT,
                xml,
                url,
                info.relay_state or "",
                response=True,
                sign=True,
                sigalg=self._algorithms(info.sp)[0],
            )
            location = dict(http["headers"])["Location"]
            return SamlMessage(url, "SAMLResponse", "", info.relay_state, location=location)
        encoded = base64.b64encode(xml.encode()).decode()
        return SamlMessage(url, "SAMLResponse", encoded, info.relay_state)

    def logout_request(
        self, sp: ServiceProvider, *, name_id: NameIdValue, session_index: str
    ) -> tuple[Endpoint, str]:
        """(SLO endpoint, signed LogoutRequest XML) for telling `sp` its session ended."""
        from idhub.saml.responses import build_logout_request

        endpoint = back_channel_endpoint(sp)
        if endpoint is None:
            raise SamlRequestRejected("the SP's metadata lists no SingleLogoutService")
        xml = build_logout_request(
            self._signing(sp),
            issuer=self.entity_id,
            destination=endpoint.location,
            name_id=name_id,
            session_index=session_index,
            now=self._clock.now(),
        )
        return endpoint, xml

    # ------------------------------------------------------------------ metadata

    def metadata_xml(self) -> str:
        return render_idp_metadata(
            entity_id=self.entity_id,
            certificates=self._keys.published(),
            sso=self.endpoint("/saml/sso"),
            slo=self.endpoint("/saml/slo"),
            want_signed=self._settings.require_signed_requests,
        )


def back_channel_endpoint(sp: ServiceProvider) -> Endpoint | None:
    """Where a server-to-server LogoutRequest goes: the SOAP SLO endpoint, else the HTTP-POST
    one (posted as a form, which SPs built on the common toolkits accept)."""
    return sp.metadata.slo_for(BINDING_SOAP, BINDING_POST)
