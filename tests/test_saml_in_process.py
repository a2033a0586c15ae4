"""No `xmlsec1` process on the SAML hot paths: a response to an SP-initiated sign-in and the
LogoutResponse to an SP's LogoutRequest, over either binding, are signed in process
(saml/xmldsig.py). python3-saml (the SP) checks what comes back. A spy on `Popen` (the stdlib's
and the name pysaml2 imported) fails the test if anything is started."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import saml2.sigver

from tests.conftest import LiveServer
from tests.saml_sp import POST, SamlSp, auto_post, running_sp
from tests.sso_support import events, make_user
from tests.test_saml_sso import PASSWORD, deliver, follow, sign_in


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    live = make_live_server(db_url)
    live.services.keys.ensure_active(lambda _line: None)
    make_user(live.services, "alice", PASSWORD, email="alice@example.com")
    return live


@pytest.fixture
def post_sp(idhub: LiveServer) -> Iterator[SamlSp]:
    """An SP whose SingleLogoutService takes the HTTP-POST binding only."""
    with running_sp(idhub.url, slo_binding=POST) as sp:
        idhub.services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True
        )
        yield sp


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    started: list[Any] = []
    real = subprocess.Popen

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            started.append(args)
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    monkeypatch.setattr(saml2.sigver, "Popen", Spy)
    return started


def test_sign_in_and_a_post_bound_logout_response_start_no_process(
    idhub: LiveServer, post_sp: SamlSp, spawned: list[Any]
) -> None:
    assert "POST" in post_sp.metadata() and "HTTP-POST" in post_sp.metadata()
    with httpx.Client(base_url=idhub.url) as client:
        signed_in = deliver(post_sp, sign_in(client, client.get(post_sp.login_url())))
        assert signed_in["ok"], signed_in
        # The SP's LogoutRequest (Redirect binding, signed in the query, as the toolkit does).
        answer = client.get(post_sp.logout_url(signed_in["name_id"], signed_in["session_index"]))
        assert answer.status_code == 200, answer.text[:300]
        action, fields = auto_post(answer.text)
    assert action == post_sp.url + "/sls"
    assert fields["RelayState"] == "/bye"
    verdict = post_sp.check_posted_logout_response(fields["SAMLResponse"])
    assert verdict["signed"] and verdict["valid"], verdict
    assert verdict["status"] == "urn:oasis:names:tc:SAML:2.0:status:Success"
    assert verdict["in_response_to"]
    assert events(idhub.services, "saml.logout_answered")[-1]["target"] == "erp"
    assert [args for args in spawned if "xmlsec1" in str(args)] == []
    assert spawned == []


def test_a_tampered_post_bound_logout_response_fails_the_sps_check(
    idhub: LiveServer, post_sp: SamlSp
) -> None:
    """The check above can fail: the same response with its status changed is refused."""
    import base64

    with httpx.Client(base_url=idhub.url) as client:
        signed_in = deliver(post_sp, sign_in(client, client.get(post_sp.login_url())))
        answer = client.get(post_sp.logout_url(signed_in["name_id"], signed_in["session_index"]))
        _, fields = auto_post(answer.text)
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    forged = xml.replace("status:Success", "status:Requester")
    assert forged != xml
    verdict = post_sp.check_posted_logout_response(base64.b64encode(forged.encode()).decode())
    assert not verdict["signed"]


def test_the_spy_sees_xmlsec1(spawned: list[Any]) -> None:
    """The spy itself works: running the binary shows up."""
    subprocess.run(["xmlsec1", "--version"], capture_output=True, check=False)
    assert any("xmlsec1" in str(args) for args in spawned)


def test_redirect_bound_logout_response_is_still_signed_in_the_query(
    idhub: LiveServer, spawned: list[Any]
) -> None:
    with running_sp(idhub.url) as sp, httpx.Client(base_url=idhub.url) as client:
        idhub.services.saml_sps.add("hr", metadata_xml=sp.metadata(), domain="hr", first_party=True)
        signed_in = deliver(sp, sign_in(client, client.get(sp.login_url())))
        answer = client.get(sp.logout_url(signed_in["name_id"], signed_in["session_index"]))
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert location.startswith(sp.url + "/sls?SAMLResponse=") and "Signature=" in location
        assert httpx.get(location).json()["errors"] == []
        assert "/login" in str(follow(client, client.get(sp.login_url())).url)
    assert spawned == []


def _post_signed(sp: SamlSp, xml: str, *, key_name: str | None = None) -> str:
    """`xml` enveloped-signed the toolkit's way (with `key_name`'s key when given), base64."""
    from onelogin.saml2.utils import OneLogin_Saml2_Utils

    settings = (
        SamlSp(idp_url=sp.idp_url, port=sp.port, key_name=key_name) if key_name else sp
    ).settings()
    signed = OneLogin_Saml2_Utils.add_sign(
        xml,
        settings.get_sp_key(),
        settings.get_sp_cert(),
        sign_algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        digest_algorithm="http://www.w3.org/2001/04/xmlenc#sha256",
    )
    return base64.b64encode(signed).decode()


@pytest.fixture
def sp(idhub: LiveServer) -> Iterator[SamlSp]:
    with running_sp(idhub.url) as sp:
        idhub.services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True
        )
        yield sp


def test_a_post_bound_signed_authn_request_is_verified_in_process(
    idhub: LiveServer, sp: SamlSp, spawned: list[Any]
) -> None:
    request_id, xml = sp.authn_request_xml()
    sp.seen_request_ids[request_id] = True
    with httpx.Client(base_url=idhub.url) as client:
        start = client.post("/saml/sso", data={"SAMLRequest": _post_signed(sp, xml)})
        assert start.status_code == 303, start.text[:300]
        verdict = deliver(sp, sign_in(client, start))
    assert verdict["ok"], verdict
    assert spawned == []


def test_a_post_bound_request_signed_by_another_key_is_refused(
    idhub: LiveServer, sp: SamlSp, spawned: list[Any]
) -> None:
    _, xml = sp.authn_request_xml()
    with httpx.Client(base_url=idhub.url) as client:
        answer = client.post(
            "/saml/sso", data={"SAMLRequest": _post_signed(sp, xml, key_name="mallory")}
        )
    assert answer.status_code == 400 and "location" not in answer.headers
    assert events(idhub.services, "saml.request_rejected")
    assert spawned == []


def test_a_wrapped_post_bound_request_is_refused(idhub: LiveServer, sp: SamlSp) -> None:
    """Signature wrapping: the genuinely signed request moved inside a forged one that carries
    the same ID (the reference then names two elements) is refused."""
    _, xml = sp.authn_request_xml()
    genuine = base64.b64decode(_post_signed(sp, xml)).decode()
    body = genuine.split("?>", 1)[-1]
    forged_open = body[: body.index(">") + 1].replace('ForceAuthn="false"', 'ForceAuthn="true"')
    close = body[body.rindex("</") :]
    wrapped = forged_open + "<samlp:Extensions>" + body + "</samlp:Extensions>" + close
    with httpx.Client(base_url=idhub.url) as client:
        answer = client.post(
            "/saml/sso", data={"SAMLRequest": base64.b64encode(wrapped.encode()).decode()}
        )
    assert answer.status_code == 400 and "location" not in answer.headers


def test_verify_enveloped_refuses_what_xmlsec1_refused() -> None:
    """The in-process check on its own: a genuine signature verifies; the same with a byte of
    the signed content changed, another key, a duplicated ID or the signature moved off the
    signed element does not."""
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    from idhub.saml.xmldsig import (
        SignatureInvalid,
        XmlSigner,
        parse,
        serialize,
        signature_template,
        verify_enveloped,
    )
    from tests.saml_sp import keypair

    key_pem, cert_pem = keypair("sp")
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, rsa_keys.RSAPrivateKey)
    ns = "urn:oasis:names:tc:SAML:2.0:protocol"
    template = signature_template(
        prefix="ds",
        reference_id="r1",
        sign_alg="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        digest_alg="http://www.w3.org/2001/04/xmlenc#sha256",
        certificate_b64="",
    )
    xml = (
        f'<p:AuthnRequest xmlns:p="{ns}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" ID="r1">'
        f"{template}<p:Extensions>x</p:Extensions></p:AuthnRequest>"
    )
    root = parse(xml)
    XmlSigner(key).sign(root)
    signed = serialize(root).encode()
    node = (ns, "AuthnRequest")
    verify_enveloped(signed, certificate_pem=cert_pem.encode(), node=node, node_id="r1")
    with pytest.raises(SignatureInvalid):
        verify_enveloped(
            signed.replace(b">x<", b">y<"), certificate_pem=cert_pem.encode(), node=node,
            node_id="r1",
        )  # fmt: skip
    _, other_cert = keypair("mallory")
    with pytest.raises(SignatureInvalid):
        verify_enveloped(signed, certificate_pem=other_cert.encode(), node=node, node_id="r1")
    twice = signed.replace(b"<p:Extensions>x", b'<p:Extensions><p:AuthnRequest ID="r1"/>x')
    with pytest.raises(SignatureInvalid):
        verify_enveloped(twice, certificate_pem=cert_pem.encode(), node=node, node_id="r1")
    with pytest.raises(SignatureInvalid):
        verify_enveloped(signed, certificate_pem=cert_pem.encode(), node=node, node_id="r2")
