"""SAML response issuance speed, against its floor: the bare xmlsec1 signing cost.

  response   `IdentityProvider.respond`: a signed Response around a signed Assertion for a
             registered SP (XML built as text, signed twice in process by libxmlsec1, the
             single-use ids written to SQLite) - responses issued per second, one thread
  encrypted  the same for an SP whose metadata publishes an encryption key (the signed
             assertion encrypted AES-256-GCM, key transported RSA-OAEP)
  signature  one enveloped signature (exclusive c14n, RSA-SHA256) on a small template document,
             in process through the same `xmlsec` binding - the floor: a response needs two
  logout     `IdentityProvider.logout_response` for an SP whose SingleLogoutService takes the
             POST binding: the LogoutResponse built and enveloped-signed in process (one
             signature; pysaml2 ran the xmlsec1 binary for it before)
  xmlsec1    the same signature made by the xmlsec1 binary (how pysaml2 signed before), for scale
  rsa        one RSA-2048 PKCS#1 v1.5 signature in-process (cryptography), for scale

Usage: python bench/bench_saml.py [--count N] [--seconds S]
Bounded: each part stops after N operations or S seconds, whichever comes first. Nothing goes
over the network.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

# pysaml2 names a cipher mode cryptography has deprecated, at import.
warnings.filterwarnings("ignore", message="CFB has been moved")

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402
from lxml import etree  # noqa: E402

from idhub.bootstrap import Services  # noqa: E402
from idhub.config import load_settings  # noqa: E402
from idhub.core.crypto import new_secret_key  # noqa: E402
from idhub.saml.attributes import NameIdValue  # noqa: E402
from idhub.saml.idp import LogoutRequestInfo  # noqa: E402
from idhub.saml.metadata import BINDING_POST  # noqa: E402
from idhub.saml.registry import NAMEID_PERSISTENT, ServiceProvider  # noqa: E402
from idhub.saml.requests import PendingRequest  # noqa: E402
from idhub.saml.xmldsig import XmlSigner  # noqa: E402

SP = "http://127.0.0.1:9/sp"
SP_METADATA = f"""<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata"
 entityID="{SP}"><md:SPSSODescriptor
 protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
 Location="http://127.0.0.1:9/acs" index="0"/></md:SPSSODescriptor></md:EntityDescriptor>"""
TEMPLATE = """<?xml version="1.0"?>
<doc xmlns="urn:bench" ID="id1"><value>x</value>
<Signature xmlns="http://www.w3.org/2000/09/xmldsig#"><SignedInfo>
<CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
<SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"/>
<Reference URI="#id1"><Transforms>
<Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
<Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/></Transforms>
<DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/><DigestValue/></Reference>
</SignedInfo><SignatureValue/></Signature></doc>"""


def _slo_post_metadata() -> str:
    """The bench SP's metadata with a POST-bound SingleLogoutService only."""
    slo = (
        '<md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"'
        ' Location="http://127.0.0.1:9/sls"/>'
    )
    return SP_METADATA.replace("/sp", "/sp-slo").replace('protocol">', 'protocol">' + slo, 1)


def _encrypting_metadata(services: Services) -> str:
    """The bench SP's metadata with an encryption key (idhub's own certificate will do)."""
    cert = services.saml_keys.current().certificate_b64
    key = (
        '<md:KeyDescriptor use="encryption"><ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/'
        f'xmldsig#"><ds:X509Data><ds:X509Certificate>{cert}</ds:X509Certificate></ds:X509Data>'
        "</ds:KeyInfo></md:KeyDescriptor>"
    )
    return SP_METADATA.replace("/sp", "/sp-enc").replace('protocol">', 'protocol">' + key, 1)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the xmlsec1 runs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(op: Callable[[], object], *, count: int, seconds: float) -> tuple[list[float], float]:
    """Wall-clock samples, and CPU seconds per operation (steadier on a shared machine)."""
    op()  # warm up (key files, pysaml2 server, caches)
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    cpu = _cpu()
    while len(samples) < count and time.monotonic() < deadline:
        started = time.perf_counter()
        op()
        samples.append(time.perf_counter() - started)
    return samples, (_cpu() - cpu) / max(len(samples), 1)


def row(name: str, measured: tuple[list[float], float]) -> float:
    samples, cpu = measured
    median = statistics.median(samples)
    print(
        f"{name:<12} {len(samples):>6} {1 / median:>12.1f} {median * 1000:>10.2f}"
        f" {cpu * 1000:>10.2f}"
    )
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "IDHUB_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "IDHUB_SECRET_KEY": new_secret_key(),
            "IDHUB_VAR_DIR": tmp,
        }
        services = Services(load_settings(None, env=env, cwd=Path(tmp)))
        services.migrate()
        services.keys.ensure_active(lambda _line: None)
        sp = services.saml_sps.add("bench", metadata_xml=SP_METADATA, domain="oa")
        encrypting = services.saml_sps.add(
            "bench-enc", metadata_xml=_encrypting_metadata(services), domain="oa"
        )
        slo_sp = services.saml_sps.add("bench-slo", metadata_xml=_slo_post_metadata(), domain="oa")
        idp = services.saml_idp
        counter = iter(range(10**9))

        def logout() -> object:
            asked = SimpleNamespace(id=f"req-{next(counter)}")
            info = LogoutRequestInfo(slo_sp, asked, "opaque", "/bye", BINDING_POST)
            message = idp.logout_response(info, success=True)
            assert message.field == "SAMLResponse" and message.value, message
            return message

        def respond(to: ServiceProvider = sp) -> object:
            pending = PendingRequest(
                sp=to.name, request_id=f"req-{next(counter)}", acs_url="http://127.0.0.1:9/acs",
                issued_at=time.time(),
            )  # fmt: skip
            return idp.respond(
                pending, to, name_id=NameIdValue(NAMEID_PERSISTENT, "opaque"),
                attributes={"uid": ["alice"], "mail": ["alice@example.com"]},
                auth_time=time.time(), session_index="s1",
            )  # fmt: skip

        material = services.saml_keys.current()
        template = Path(tmp) / "template.xml"
        template.write_text(TEMPLATE, encoding="utf-8")

        def xmlsec1() -> object:
            return subprocess.run(
                ["xmlsec1", "--sign", "--privkey-pem", str(material.key_file),
                 "--id-attr:ID", "doc", str(template)],
                check=True, capture_output=True,
            )  # fmt: skip

        _, private_key = services.keys.signer("RS256")
        signer = XmlSigner(private_key)

        def signature() -> object:
            doc = etree.fromstring(TEMPLATE.encode())
            signer.sign(doc)
            return doc

        def rsa() -> object:
            return private_key.sign(b"x" * 64, padding.PKCS1v15(), hashes.SHA256())

        print(f"{'operation':<12} {'n':>6} {'per second':>12} {'ms (p50)':>10} {'cpu ms/op':>10}")
        response = row("response", timed(respond, count=args.count, seconds=args.seconds))
        row(
            "encrypted",
            timed(lambda: respond(encrypting), count=args.count, seconds=args.seconds / 2),
        )
        answered = row("logout", timed(logout, count=args.count, seconds=args.seconds / 2))
        floor = row("signature", timed(signature, count=args.count, seconds=args.seconds))
        binary = row("xmlsec1", timed(xmlsec1, count=args.count, seconds=args.seconds / 2))
        row("rsa", timed(rsa, count=args.count, seconds=args.seconds / 4))
        services.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = response / (2 * floor)
    print(f"\nCPU per response / (2 x CPU per bare in-process signature) = {ratio:.2f}")
    print(
        f"CPU per response / (2 x CPU per xmlsec1 binary signature) = {response / (2 * binary):.3f}"
    )
    print(
        f"CPU per POST LogoutResponse / CPU per bare in-process signature = {answered / floor:.2f}"
    )
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"load average {' '.join(load)}")
    print(f"peak RSS {peak:.0f} MiB; goal >= 150 responses/s (see docs/performance.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
