"""What must fail, fails: the SP (python3-saml) rejects tampered, replayed, expired,
wrong-audience and unsigned responses; idhub rejects forged AuthnRequests (unsigned where
signing is required, signed by another key, altered after signing, an unlisted ACS, an unknown
issuer, SHA-1, a stale IssueInstant) with an error page and never a redirect."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from onelogin.saml2.utils import OneLogin_Saml2_Utils

from tests.conftest import LiveServer
from tests.saml_sp import SamlSp, auto_post, running_sp
from tests.sso_support import events, make_user
from tests.test_saml_sso import PASSWORD, follow, sign_in

RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    make_user(live.services, "alice", PASSWORD, email="alice@example.com")
    return live


@pytest.fixture
def sp(idhub: LiveServer) -> Iterator[SamlSp]:
    with running_sp(idhub.url) as sp:
        idhub.services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True
        )
        yield sp


@pytest.fixture
def signed_in(idhub: LiveServer, sp: SamlSp) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """A browser signed in to idhub, and the fields of a genuine response for the SP."""
    with httpx.Client(base_url=idhub.url) as client:
        _, fields = auto_post(sign_in(client, client.get(sp.login_url())).text)
        yield client, fields


def _xml(fields: dict[str, str]) -> str:
    return base64.b64decode(fields["SAMLResponse"]).decode()


def _with_xml(fields: dict[str, str], xml: str) -> dict[str, str]:
    return {**fields, "SAMLResponse": base64.b64encode(xml.encode()).decode()}


# ------------------------------------------------------------------ the SP rejects


def test_genuine_response_is_accepted_once(signed_in: Any, sp: SamlSp) -> None:
    _, fields = signed_in
    assert sp.consume(fields)["ok"]
    replay = sp.consume(fields)
    assert not replay["ok"]


def test_tampered_response_is_rejected(signed_in: Any, sp: SamlSp) -> None:
    _, fields = signed_in
    xml = _xml(fields).replace(">alice<", ">mallory<")
    assert ">mallory<" in xml
    verdict = sp.consume(_with_xml(fields, xml))
    assert not verdict["ok"], verdict


def test_unsigned_response_is_rejected(signed_in: Any, sp: SamlSp) -> None:
    _, fields = signed_in
    xml = re.sub(r"<ns\d:Signature\b.*?</ns\d:Signature>", "", _xml(fields), flags=re.S)
    assert "SignatureValue" not in xml
    verdict = sp.consume(_with_xml(fields, xml))
    assert not verdict["ok"], verdict


def test_expired_response_is_rejected(
    signed_in: Any, sp: SamlSp, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fields = signed_in
    later = OneLogin_Saml2_Utils.now() + 6 * 60
    monkeypatch.setattr(OneLogin_Saml2_Utils, "now", staticmethod(lambda: later))
    verdict = sp.consume(fields)
    assert not verdict["ok"], verdict
    # The toolkit reports a SubjectConfirmationData past its NotOnOrAfter this way.
    assert "SubjectConfirmation" in verdict["reason"]


def test_response_for_another_sp_is_rejected(idhub: LiveServer, signed_in: Any) -> None:
    _, fields = signed_in
    with running_sp(idhub.url, entity_path="/other") as other:
        verdict = other.consume(fields, request_id=None)
    assert not verdict["ok"], verdict
    assert "audience" in (verdict["reason"] or "").lower() or verdict["errors"]


def test_not_on_or_after_is_at_most_five_minutes(signed_in: Any) -> None:
    _, fields = signed_in
    xml = _xml(fields)
    issued = re.search(r'IssueInstant="([^"]+)"', xml)
    expires = re.search(r'NotOnOrAfter="([^"]+)"', xml)
    assert issued and expires
    seconds = OneLogin_Saml2_Utils.parse_SAML_to_time(
        expires.group(1)
    ) - OneLogin_Saml2_Utils.parse_SAML_to_time(issued.group(1))
    assert 0 < seconds <= 300
    assert 'Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"' in xml
    assert xml.count("SignatureValue>") >= 4  # response and assertion, opening and closing


# ------------------------------------------------------------------ idhub rejects


def _refused(client: httpx.Client, url: str) -> httpx.Response:
    response = client.get(url)
    assert response.status_code == 400, response.text[:300]
    assert "location" not in response.headers
    assert "saml_request_rejected" in response.text
    return response


def test_unsigned_request_is_refused_when_the_sp_signs(idhub: LiveServer, sp: SamlSp) -> None:
    _, xml = sp.authn_request_xml()
    with httpx.Client() as client:
        _refused(client, sp.redirect_for(xml, sign=False))
    assert events(idhub.services, "saml.request_rejected")


def test_request_signed_by_another_key_is_refused(sp: SamlSp) -> None:
    mallory = SamlSp(idp_url=sp.idp_url, port=sp.port, key_name="mallory")
    _, xml = mallory.authn_request_xml()
    with httpx.Client() as client:
        _refused(client, mallory.redirect_for(xml))


def test_request_altered_after_signing_is_refused(sp: SamlSp) -> None:
    url = sp.login_url()
    raw = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    xml = OneLogin_Saml2_Utils.decode_base64_and_inflate(
        httpx.QueryParams(url.split("?", 1)[1])["SAMLRequest"]
    ).decode()
    evil = OneLogin_Saml2_Utils.deflate_and_base64_encode(
        xml.replace("ForceAuthn", "IsPassive") if "ForceAuthn" in xml else xml + " "
    )
    from urllib.parse import quote_plus

    raw["SAMLRequest"] = quote_plus(evil)
    forged = url.split("?", 1)[0] + "?" + "&".join(f"{k}={v}" for k, v in raw.items())
    with httpx.Client() as client:
        _refused(client, forged)


def test_post_bound_request_altered_after_signing_is_refused(idhub: LiveServer, sp: SamlSp) -> None:
    settings = sp.settings()
    _, xml = sp.authn_request_xml()
    signed = OneLogin_Saml2_Utils.add_sign(
        xml,
        settings.get_sp_key(),
        settings.get_sp_cert(),
        sign_algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        digest_algorithm="http://www.w3.org/2001/04/xmlenc#sha256",
    ).decode()
    forged = signed.replace('ForceAuthn="false"', 'ForceAuthn="true"')
    if forged == signed:
        forged = signed.replace(f"{sp.url}/acs", f"{sp.url}/acs2")
    assert forged != signed
    with httpx.Client(base_url=idhub.url) as client:
        response = client.post(
            "/saml/sso", data={"SAMLRequest": base64.b64encode(forged.encode()).decode()}
        )
    assert response.status_code == 400 and "location" not in response.headers


def test_unlisted_acs_url_is_refused_even_when_signed(sp: SamlSp) -> None:
    _, xml = sp.authn_request_xml()
    evil = xml.replace(f"{sp.url}/acs", "https://evil.example/acs")
    assert "evil.example" in evil
    with httpx.Client() as client:
        _refused(client, sp.redirect_for(evil))


def test_unknown_issuer_is_refused(idhub: LiveServer) -> None:
    stranger = SamlSp(idp_url=idhub.url, port=1, entity_path="/stranger")
    _, xml = stranger.authn_request_xml()
    with httpx.Client() as client:
        _refused(client, stranger.redirect_for(xml))


def test_sha1_signature_is_refused_unless_legacy(idhub: LiveServer, sp: SamlSp) -> None:
    _, xml = sp.authn_request_xml()
    with httpx.Client() as client:
        _refused(client, sp.redirect_for(xml, alg=RSA_SHA1))
    idhub.services.saml_sps.add(
        "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True,
        legacy_sha1=True, replace=True,
    )  # fmt: skip
    _, xml = sp.authn_request_xml()
    with httpx.Client() as client:
        page = client.get(sp.redirect_for(xml, alg=RSA_SHA1))
    assert page.status_code == 303 and "/login" in page.headers["location"]


def test_stale_request_is_refused(sp: SamlSp) -> None:
    _, xml = sp.authn_request_xml()
    stale = re.sub(r'IssueInstant="[^"]+"', 'IssueInstant="2020-01-01T00:00:00Z"', xml)
    with httpx.Client() as client:
        _refused(client, sp.redirect_for(stale))


def test_an_answered_request_is_not_answered_twice(idhub: LiveServer, sp: SamlSp) -> None:
    url = sp.login_url()
    with httpx.Client(base_url=idhub.url) as client:
        page = sign_in(client, client.get(url))
        assert sp.consume(auto_post(page.text)[1])["ok"]
        again = follow(client, client.get(url))
    assert again.status_code == 400 and "answered already" in again.text
