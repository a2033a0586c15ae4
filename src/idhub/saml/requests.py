"""The checks made on what SPs send, and the validated request carried through the login page.

- Redirect-binding signatures are verified over the query string exactly as it arrived
  (SAML bindings §3.4.4.1: the URL-encoded `SAMLRequest`, `RelayState` and `SigAlg`), against
  the signing certificates in the SP's metadata. SHA-1 is refused unless the SP is legacy.
- POST-binding signatures are enveloped in the XML and verified while pysaml2 parses it, in
  process (`_pysaml2.InProcessVerification`, `xmldsig.verify_enveloped`); only the algorithm
  is checked here.
- A validated AuthnRequest is sealed into a short-lived HMAC'd `PendingRequest` so the browser can
  come back from the login or consent page without the request being parsed (or replayed) again.
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import asdict, dataclass
from urllib.parse import unquote_plus

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from idhub.core.crypto import KeyedHasher
from idhub.errors import SamlRequestRejected
from idhub.saml.registry import ServiceProvider

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
DIGEST_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
DIGEST_SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
PENDING_TTL = 600.0
MAX_PENDING = 4000


def check_algorithm(sp: ServiceProvider, algorithm: str) -> bool:
    """RSA-SHA256 from everyone; RSA-SHA1 only from an SP marked legacy."""
    return algorithm == RSA_SHA256 or (algorithm == RSA_SHA1 and sp.legacy_sha1)


def raw_query_values(raw_query: str) -> dict[str, str]:
    """name -> the value exactly as URL-encoded in the query (first occurrence)."""
    found: dict[str, str] = {}
    for part in raw_query.split("&"):
        name, _, value = part.partition("=")
        found.setdefault(unquote_plus(name), value)
    return found


def require_redirect_signature(sp: ServiceProvider, raw_query: str, *, message: str) -> None:
    """Raises unless the query carries a valid signature by one of the SP's certificates."""
    raw = raw_query_values(raw_query)
    sig_alg = unquote_plus(raw.get("SigAlg", ""))
    signature = unquote_plus(raw.get("Signature", ""))
    if not sig_alg or not signature:
        raise SamlRequestRejected(f"the {message} is not signed")
    if not check_algorithm(sp, sig_alg):
        raise SamlRequestRejected(f"signature algorithm {sig_alg} is not accepted")
    signed = "&".join(
        f"{name}={raw[name]}" for name in (message, "RelayState", "SigAlg") if name in raw
    ).encode("ascii", "replace")
    digest = hashes.SHA256() if sig_alg == RSA_SHA256 else hashes.SHA1()  # noqa: S303
    try:
        sig = base64.b64decode(signature, validate=False)
    except ValueError as exc:
        raise SamlRequestRejected("the signature is not base64") from exc
    for cert in sp.metadata.signing_certs:
        public = x509.load_der_x509_certificate(base64.b64decode(cert)).public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            continue
        try:
            public.verify(sig, signed, padding.PKCS1v15(), digest)
        except InvalidSignature:
            continue
        return
    raise SamlRequestRejected(f"the {message}'s signature does not verify")


@dataclass(frozen=True)
class PendingRequest:
    """A validated AuthnRequest (or an IdP-initiated start) waiting for the person."""

    sp: str
    request_id: str | None
    acs_url: str
    force_authn: bool = False
    is_passive: bool = False
    relay_state: str | None = None
    issued_at: float = 0.0


class PendingRequests:
    """Seals and opens `PendingRequest`s (HMAC under a key derived from the server secret)."""

    def __init__(self, hasher: KeyedHasher) -> None:
        self._hasher = hasher

    def seal(self, pending: PendingRequest) -> str:
        body = base64.urlsafe_b64encode(
            json.dumps(asdict(pending), separators=(",", ":")).encode()
        ).decode()
        return f"{body}.{self._hasher.hash(body)[:43]}"

    def open(self, token: str | None, *, now: float) -> PendingRequest | None:
        if not token or "." not in token or len(token) > MAX_PENDING:
            return None
        body, mac = token.rsplit(".", 1)
        if not hmac.compare_digest(self._hasher.hash(body)[:43], mac):
            return None
        try:
            pending = PendingRequest(**json.loads(base64.urlsafe_b64decode(body)))
        except (ValueError, TypeError):
            return None
        return pending if 0 <= now - pending.issued_at <= PENDING_TTL else None
