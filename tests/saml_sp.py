"""A SAML service provider for the tests: OneLogin's python3-saml toolkit behind a tiny Starlette
app on 127.0.0.1. It starts sign-in (`/login`, Redirect or POST binding), consumes responses at
`/acs` the way a real SP does (signature, audience, InResponseTo, NotOnOrAfter, plus a replay
cache of assertion ids, which the toolkit leaves to its host), answers LogoutResponses at `/sls`
and receives idhub's back-channel LogoutRequests at `/slo-soap`."""

from __future__ import annotations

import base64
import contextlib
import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.logout_response import OneLogin_Saml2_Logout_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.conftest import free_port, serve_asgi

REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
SOAP = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')
_ACTION = re.compile(r'<form id="saml-post" method="post" action="([^"]+)"')


@lru_cache(maxsize=4)
def keypair(cn: str = "sp") -> tuple[str, str]:
    """(private key PEM, certificate PEM) made once per test session."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def auto_post(page: str) -> tuple[str, dict[str, str]]:
    """The action and fields of idhub's auto-submitting SAML form (what a browser posts)."""
    import html

    action = _ACTION.search(page)
    assert action, f"no SAML form in the page: {page[:500]}"
    fields = {html.unescape(k): html.unescape(v) for k, v in _FIELD.findall(page)}
    return html.unescape(action.group(1)), fields


@dataclass
class SamlSp:
    idp_url: str
    port: int
    entity_path: str = "/metadata"
    sign_requests: bool = True
    binding: str = REDIRECT
    key_name: str = "sp"
    # Ask for encrypted assertions (the toolkit then publishes a use="encryption" key).
    want_encrypted: bool = False
    # The binding of the SP's own SingleLogoutService (where a LogoutResponse comes back).
    slo_binding: str = REDIRECT
    seen_request_ids: dict[str, bool] = field(default_factory=dict)
    seen_assertions: set[str] = field(default_factory=set)
    logout_requests: list[dict[str, Any]] = field(default_factory=list)
    idp_metadata: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def entity_id(self) -> str:
        return self.url + self.entity_path

    def settings(self, *, query_signed: bool = True) -> OneLogin_Saml2_Settings:
        key, cert = keypair(self.key_name)
        if not self.idp_metadata:
            self.idp_metadata = httpx.get(f"{self.idp_url}/saml/metadata").text
        idp = OneLogin_Saml2_IdPMetadataParser.parse(
            self.idp_metadata, required_sso_binding=self.binding
        )["idp"]
        data = {
            "strict": True,
            "sp": {
                "entityId": self.entity_id,
                "assertionConsumerService": {"url": self.url + "/acs", "binding": POST},
                "singleLogoutService": {"url": self.url + "/sls", "binding": self.slo_binding},
                "NameIDFormat": "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                "x509cert": cert,
                "privateKey": key,
            },
            "idp": idp,
            "security": {
                "authnRequestsSigned": self.sign_requests,
                "logoutRequestSigned": True,
                "logoutResponseSigned": True,
                "wantAssertionsSigned": True,
                "wantAssertionsEncrypted": self.want_encrypted,
                "wantMessagesSigned": query_signed,
                "signatureAlgorithm": RSA_SHA256,
                "digestAlgorithm": SHA256,
                "rejectDeprecatedAlgorithm": True,
            },
        }
        return OneLogin_Saml2_Settings(data)

    def metadata(self) -> str:
        """The SP's metadata as the toolkit makes it, plus a SOAP SLO endpoint (back channel)."""
        xml = self.settings().get_sp_metadata()
        text = xml.decode() if isinstance(xml, bytes) else xml
        soap = f'<md:SingleLogoutService Binding="{SOAP}" Location="{self.url}/slo-soap" />'
        return text.replace("<md:NameIDFormat>", soap + "<md:NameIDFormat>", 1)

    def _request(self, request: Request, post: dict[str, Any] | None = None) -> dict[str, Any]:
        parts = urlsplit(str(request.url))
        return {
            "https": "off",
            "http_host": parts.netloc,
            "script_name": parts.path,
            "get_data": dict(request.query_params),
            "post_data": post or {},
            "query_string": parts.query,
        }

    # ------------------------------------------------------------------ what the SP does

    def login_url(self, relay_state: str = "/after", **kwargs: Any) -> str:
        auth = OneLogin_Saml2_Auth(
            {"https": "off", "http_host": f"127.0.0.1:{self.port}", "script_name": "/login",
             "get_data": {}, "post_data": {}},
            self.settings(),
        )  # fmt: skip
        url = auth.login(return_to=relay_state, **kwargs)
        self.seen_request_ids[auth.get_last_request_id()] = True
        return str(url)

    def authn_request_xml(self, **kwargs: Any) -> tuple[str, str]:
        """(request id, AuthnRequest XML) as the toolkit writes it, for tests that alter it."""
        request = OneLogin_Saml2_Authn_Request(self.settings(), **kwargs)
        self.seen_request_ids[request.get_id()] = True
        return request.get_id(), request.get_xml().decode() if isinstance(
            request.get_xml(), bytes
        ) else request.get_xml()

    def redirect_for(
        self, xml: str, *, relay_state: str = "/after", sign: bool = True, alg: str = RSA_SHA256
    ) -> str:
        """The Redirect-binding URL for `xml`, signed with this SP's key the toolkit's way."""
        auth = OneLogin_Saml2_Auth(
            {"https": "off", "http_host": f"127.0.0.1:{self.port}", "script_name": "/login",
             "get_data": {}, "post_data": {}},
            self.settings(),
        )  # fmt: skip
        parameters = {
            "SAMLRequest": OneLogin_Saml2_Utils.deflate_and_base64_encode(xml),
            "RelayState": relay_state,
        }
        if sign:
            auth.add_request_signature(parameters, alg)
        return str(auth.redirect_to(f"{self.idp_url}/saml/sso", parameters))

    def consume(self, post: dict[str, str], *, request_id: str | None = "any") -> dict[str, Any]:
        """Processes a response the way `/acs` does; returns the verdict."""
        req = {"https": "off", "http_host": f"127.0.0.1:{self.port}", "script_name": "/acs",
               "get_data": {}, "post_data": post}  # fmt: skip
        auth = OneLogin_Saml2_Auth(req, self.settings())
        in_response_to = None
        if request_id == "any":
            raw = OneLogin_Saml2_Utils.b64decode(post["SAMLResponse"]).decode()
            found = re.search(r'InResponseTo="([^"]+)"', raw)
            in_response_to = found.group(1) if found else None
            if in_response_to is not None and in_response_to not in self.seen_request_ids:
                return {"ok": False, "errors": ["unknown InResponseTo"]}
        auth.process_response(request_id=in_response_to if request_id == "any" else request_id)
        errors = auth.get_errors()
        if not errors:
            assertion_id = auth.get_last_assertion_id()
            if assertion_id in self.seen_assertions:
                errors = ["replayed assertion"]
            else:
                self.seen_assertions.add(assertion_id)
                self.seen_request_ids.pop(in_response_to or "", None)
        return {
            "ok": not errors and auth.is_authenticated(),
            "errors": errors,
            "reason": auth.get_last_error_reason(),
            "name_id": auth.get_nameid(),
            "name_id_format": auth.get_nameid_format(),
            "session_index": auth.get_session_index(),
            "attributes": auth.get_attributes(),
            "friendly": auth.get_friendlyname_attributes(),
            "relay_state": post.get("RelayState"),
        }

    def logout_url(self, name_id: str, session_index: str | None) -> str:
        auth = OneLogin_Saml2_Auth(
            {"https": "off", "http_host": f"127.0.0.1:{self.port}", "script_name": "/logout",
             "get_data": {}, "post_data": {}},
            self.settings(),
        )  # fmt: skip
        return str(
            auth.logout(
                return_to="/bye",
                name_id=name_id,
                session_index=session_index,
                name_id_format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
            )
        )

    def check_posted_logout_response(self, encoded: str) -> dict[str, Any]:
        """A LogoutResponse that came back over the POST binding: its enveloped signature by
        the IdP's certificate, then the toolkit's own checks (destination, issuer, status)."""
        xml = base64.b64decode(encoded).decode()
        signed = OneLogin_Saml2_Utils.validate_sign(
            xml,
            self.settings().get_idp_cert(),
            xpath="/samlp:LogoutResponse/ds:Signature",
            raise_exceptions=False,
        )
        # The toolkit checks signatures of the Redirect binding only (see slo_soap).
        response = OneLogin_Saml2_Logout_Response(self.settings(query_signed=False), encoded)
        request = {
            "https": "off", "http_host": f"127.0.0.1:{self.port}", "script_name": "/sls",
            "get_data": {}, "post_data": {"SAMLResponse": encoded},
        }  # fmt: skip
        valid = response.is_valid(request, raise_exceptions=False)
        return {
            "signed": bool(signed),
            "valid": bool(valid),
            "error": response.get_error(),
            "status": response.get_status(),
            "in_response_to": response.get_in_response_to(),
        }

    # ------------------------------------------------------------------ the app

    async def acs(self, request: Request) -> Response:
        form = await request.form()
        return JSONResponse(self.consume({k: str(v) for k, v in form.items()}))

    async def sls(self, request: Request) -> Response:
        auth = OneLogin_Saml2_Auth(self._request(request), self.settings())
        auth.process_slo(keep_local_session=True)
        return JSONResponse({"errors": auth.get_errors(), "reason": auth.get_last_error_reason()})

    async def slo_soap(self, request: Request) -> Response:
        body = (await request.body()).decode()
        found = re.search(r"<(\w+:)?LogoutRequest\b.*</(\w+:)?LogoutRequest>", body, re.S)
        assert found, body
        xml = found.group(0)
        idp_cert = self.settings().get_idp_cert()
        signed = OneLogin_Saml2_Utils.validate_sign(
            xml,
            idp_cert,
            xpath="/samlp:LogoutRequest/ds:Signature",
            raise_exceptions=False,
        )
        encoded = base64.b64encode(xml.encode()).decode()
        # The toolkit checks signatures of the Redirect binding only; the enveloped signature
        # of the SOAP message was verified just above.
        logout = OneLogin_Saml2_Logout_Request(self.settings(query_signed=False), encoded)
        req = self._request(request)
        req["get_data"] = {"SAMLRequest": encoded}
        valid = logout.is_valid(req, raise_exceptions=False) if signed else False
        self.logout_requests.append(
            {
                "signed": signed,
                "valid": valid,
                "error": logout.get_error(),
                "name_id": OneLogin_Saml2_Logout_Request.get_nameid(xml),
                "session_indexes": OneLogin_Saml2_Logout_Request.get_session_indexes(xml),
            }
        )
        return Response("<ok/>", media_type="text/xml")

    async def start(self, request: Request) -> Response:
        return RedirectResponse(self.login_url(), status_code=302)

    async def landing(self, request: Request) -> Response:
        return HTMLResponse("<h1>SP</h1>")

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/login", self.start),
                Route("/acs", self.acs, methods=["POST"]),
                Route("/sls", self.sls),
                Route("/slo-soap", self.slo_soap, methods=["POST"]),
                Route("/after", self.landing),
            ]
        )


@contextlib.contextmanager
def running_sp(idp_url: str, **kwargs: Any) -> Iterator[SamlSp]:
    sp = SamlSp(idp_url=idp_url, port=free_port(), **kwargs)
    with serve_asgi(sp.app(), sp.port):
        yield sp
