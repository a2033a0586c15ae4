"""The IdP's signing key: idhub's active RS256 key (the key store's, sealed in the database and
rotated by `idhub keys rotate`), wrapped in a self-signed certificate for SAML.

SAML publishes keys as X.509 certificates, so the first time a key signs a SAML message a
certificate is made for it and stored (public data) in the database, where every replica finds
the same one. The IdP metadata lists the certificate of every RS256 key the key store still
publishes, so after a rotation SPs that refresh their metadata trust the new key before it is
used, and the retired one until it leaves the JWKS (the same overlap as for ID tokens).

Responses, assertions and logout messages are signed in process with the opened key
(`saml/xmldsig.py`). pysaml2, which signs the Redirect-binding query of a LogoutResponse (in
process too), reads the key from a file: the opened key is written to a private temporary
directory (mode 0700, file 0600), removed when the process ends or the key changes.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from idhub.core.clock import Clock
from idhub.errors import ConfigError

ALG = "RS256"


class KeyDescription(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def alg(self) -> str: ...
    @property
    def expires_at(self) -> float | None: ...


class RsaKeySource(Protocol):
    """What the key store offers (oidc/keys.py `KeyStore`)."""

    def signer(self, alg: str) -> tuple[str, Any]: ...
    def verification_key(self, kid: str) -> tuple[str, Any] | None: ...
    def list(self) -> Sequence[KeyDescription]: ...


class CertificateStore(Protocol):
    def get(self, kid: str) -> str | None: ...
    def put_if_absent(self, kid: str, certificate_pem: str, *, now: float) -> str:
        """Stores the certificate unless one exists; returns the one stored."""
        ...


@dataclass(frozen=True)
class SigningMaterial:
    kid: str
    key_file: Path
    cert_file: Path
    certificate_pem: str
    # Signs responses in process (saml/xmldsig.py); never printed.
    private_key: rsa.RSAPrivateKey = field(repr=False, compare=False)

    @property
    def certificate_b64(self) -> str:
        return pem_body(self.certificate_pem)


def pem_body(pem: str) -> str:
    """The base64 of a PEM certificate, as metadata and KeyInfo carry it."""
    return "".join(line for line in pem.strip().splitlines() if "-----" not in line)


def make_certificate(
    private_key: rsa.RSAPrivateKey, *, kid: str, cn: str, now: float, days: int
) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64] or "idhub")])
    start = datetime.datetime.fromtimestamp(now - 300, tz=datetime.UTC)
    serial = int.from_bytes(hashlib.sha256(kid.encode()).digest()[:16], "big") >> 1
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(serial or 1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .sign(private_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class SamlKeys:
    """`services.saml_keys`."""

    def __init__(
        self,
        keys: RsaKeySource,
        certificates: CertificateStore,
        *,
        clock: Clock,
        common_name: str,
        days: int,
    ) -> None:
        self._keys = keys
        self._certificates = certificates
        self._clock = clock
        self._cn = common_name
        self._days = days
        self._lock = threading.Lock()
        self._current: SigningMaterial | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="idhub-saml-"))
        os.chmod(self._dir, 0o700)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)

    def current(self) -> SigningMaterial:
        """The active key's files for pysaml2 (re-written when the active key changes)."""
        kid, private_key = self._keys.signer(ALG)
        current = self._current
        if current is not None and current.kid == kid:
            return current
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ConfigError("the active RS256 key is not an RSA key")
        with self._lock:
            if self._current is not None and self._current.kid == kid:
                return self._current
            pem = self._certificate_for(kid, private_key)
            material = self._write(kid, private_key, pem)
            previous, self._current = self._current, material
        if previous is not None:
            previous.key_file.unlink(missing_ok=True)
        return material

    def published(self) -> list[str]:
        """PEM certificates for the metadata: the active key's first, then every RS256 key
        still published that has one (retired keys stay until the key store drops them)."""
        active = self.current()
        found = [active.certificate_pem]
        now = self._clock.now()
        for info in self._keys.list():
            if info.alg != ALG or info.kid == active.kid:
                continue
            if info.expires_at is not None and info.expires_at <= now:
                continue
            pem = self._certificates.get(info.kid)
            if pem is not None:
                found.append(pem)
        return found

    def close(self) -> None:
        self._cleanup()

    def _certificate_for(self, kid: str, private_key: rsa.RSAPrivateKey) -> str:
        stored = self._certificates.get(kid)
        if stored is not None:
            return stored
        now = self._clock.now()
        pem = make_certificate(private_key, kid=kid, cn=self._cn, now=now, days=self._days)
        return self._certificates.put_if_absent(kid, pem, now=now)

    def _write(self, kid: str, private_key: rsa.RSAPrivateKey, cert_pem: str) -> SigningMaterial:
        safe = hashlib.sha256(kid.encode()).hexdigest()[:16]
        key_file = self._dir / f"{safe}.key"
        cert_file = self._dir / f"{safe}.crt"
        key_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        cert_file.write_text(cert_pem, encoding="ascii")
        return SigningMaterial(kid, key_file, cert_file, cert_pem, private_key)
