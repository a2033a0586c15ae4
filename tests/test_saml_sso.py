"""SAML Web Browser SSO against the running idhub, with OneLogin's python3-saml as the SP:
SP-initiated (Redirect and POST bindings) through idhub's login page, IdP-initiated with
RelayState, NameID formats, attribute release with roles, ForceAuthn and IsPassive."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from idhub.saml.attributes import ATTRIBUTE_URIS
from tests.conftest import LiveServer
from tests.saml_sp import POST, SamlSp, auto_post, running_sp
from tests.sso_support import events, make_user, post_login

PASSWORD = "alice-demo-1"


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    make_user(
        live.services,
        "alice",
        PASSWORD,
        display_name="王小丽",
        email="alice@example.com",
        employee_id="E1001",
    )
    # The policy engine picks the new person up (as its poller would within seconds).
    live.services.authz.refresh_directory()
    return live


@pytest.fixture
def sp(idhub: LiveServer) -> Iterator[SamlSp]:
    with running_sp(idhub.url) as sp:
        # Everyone holds `employee` in the oa domain (policies/assignments.yaml).
        idhub.services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="oa", first_party=True
        )
        yield sp


def follow(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    """Follows redirects inside idhub (a browser would); stops at a page."""
    while response.status_code in (302, 303):
        response = client.get(urljoin(str(response.url), response.headers["location"]))
    return response


def sign_in(client: httpx.Client, start: httpx.Response) -> httpx.Response:
    page = follow(client, start)
    assert "/login" in str(page.url), page.text[:300]
    return follow(client, post_login(client, page, "alice", PASSWORD))


def deliver(sp: SamlSp, page: httpx.Response) -> dict[str, Any]:
    action, fields = auto_post(page.text)
    assert action == sp.url + "/acs"
    return sp.consume(fields)


def test_sp_initiated_redirect_binding_through_the_login_page(
    idhub: LiveServer, sp: SamlSp
) -> None:
    with httpx.Client(base_url=idhub.url) as client:
        page = sign_in(client, client.get(sp.login_url(relay_state="/after")))
        verdict = deliver(sp, page)
    assert verdict["ok"], verdict
    assert verdict["relay_state"] == "/after"
    assert verdict["name_id_format"] == "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
    assert len(verdict["name_id"]) >= 32 and "alice" not in verdict["name_id"]
    friendly = verdict["friendly"]
    assert friendly["uid"] == ["alice"]
    assert friendly["mail"] == ["alice@example.com"]
    assert friendly["displayName"] == ["王小丽"]
    assert friendly["employeeNumber"] == ["E1001"]
    assert friendly["roles"] == ["employee"]
    assert verdict["attributes"][ATTRIBUTE_URIS["uid"]] == ["alice"]
    issued = events(idhub.services, "saml.response_issued")
    assert issued and issued[-1]["target"] == "erp"


def test_a_second_sp_gets_another_persistent_name_id_and_no_second_password(
    idhub: LiveServer, sp: SamlSp
) -> None:
    with running_sp(idhub.url, entity_path="/other-metadata") as other:
        idhub.services.saml_sps.add(
            "archive", metadata_xml=other.metadata(), domain="archive", first_party=True
        )
        with httpx.Client(base_url=idhub.url) as client:
            first = deliver(sp, sign_in(client, client.get(sp.login_url())))
            page = follow(client, client.get(other.login_url()))
            second = deliver(other, page)
    assert first["ok"] and second["ok"], (first, second)
    assert first["name_id"] != second["name_id"]


def test_sp_initiated_post_binding(idhub: LiveServer) -> None:
    with running_sp(idhub.url, binding=POST) as sp:
        idhub.services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True
        )
        # The toolkit builds a Redirect URL; the same signed request is posted as XML instead.
        from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
        from onelogin.saml2.utils import OneLogin_Saml2_Utils

        settings = sp.settings()
        request = OneLogin_Saml2_Authn_Request(settings)
        xml = request.get_xml()
        signed = OneLogin_Saml2_Utils.add_sign(
            xml,
            settings.get_sp_key(),
            settings.get_sp_cert(),
            sign_algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            digest_algorithm="http://www.w3.org/2001/04/xmlenc#sha256",
        )
        sp.seen_request_ids[request.get_id()] = True
        with httpx.Client(base_url=idhub.url) as client:
            start = client.post(
                "/saml/sso",
                data={
                    "SAMLRequest": base64.b64encode(signed).decode(),
                    "RelayState": "post-relay",
                },
            )
            assert start.status_code == 303
            verdict = deliver(sp, sign_in(client, start))
    assert verdict["ok"], verdict
    assert verdict["relay_state"] == "post-relay"


def test_idp_initiated_with_relay_state(idhub: LiveServer, sp: SamlSp) -> None:
    with httpx.Client(base_url=idhub.url) as client:
        page = sign_in(client, client.get("/saml/idp/erp", params={"RelayState": "/after"}))
        action, fields = auto_post(page.text)
        verdict = sp.consume(fields, request_id=None)
    assert action == sp.url + "/acs"
    assert verdict["ok"], verdict
    assert verdict["relay_state"] == "/after"
    assert "InResponseTo" not in base64.b64decode(fields["SAMLResponse"]).decode()


def test_email_and_unspecified_name_ids(idhub: LiveServer, sp: SamlSp) -> None:
    services = idhub.services
    with httpx.Client(base_url=idhub.url) as client:
        services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True,
            name_id_format="email", replace=True,
        )  # fmt: skip
        email = deliver(sp, sign_in(client, client.get(sp.login_url())))
        services.saml_sps.add(
            "erp", metadata_xml=sp.metadata(), domain="erp", first_party=True,
            name_id_format="unspecified", replace=True,
        )  # fmt: skip
        plain = deliver(sp, follow(client, client.get(sp.login_url())))
    assert email["ok"] and email["name_id"] == "alice@example.com"
    assert email["name_id_format"] == "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
    assert plain["ok"] and plain["name_id"] == "alice"


def test_force_authn_asks_for_the_password_again(idhub: LiveServer, sp: SamlSp) -> None:
    with httpx.Client(base_url=idhub.url) as client:
        assert deliver(sp, sign_in(client, client.get(sp.login_url())))["ok"]
        again = follow(client, client.get(sp.login_url(force_authn=True)))
        assert "/login" in str(again.url)
        verdict = deliver(sp, follow(client, post_login(client, again, "alice", PASSWORD)))
    assert verdict["ok"], verdict


def test_is_passive_without_a_session_answers_no_passive(idhub: LiveServer, sp: SamlSp) -> None:
    with httpx.Client(base_url=idhub.url) as client:
        page = follow(client, client.get(sp.login_url(is_passive=True)))
        verdict = deliver(sp, page)
    assert not verdict["ok"]
    assert "not Success" in verdict["reason"]
    _, fields = auto_post(page.text)
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    assert 'Value="urn:oasis:names:tc:SAML:2.0:status:NoPassive"' in xml


def test_third_party_sp_asks_consent_once(idhub: LiveServer) -> None:
    with running_sp(idhub.url) as sp:
        idhub.services.saml_sps.add("erp", metadata_xml=sp.metadata(), domain="erp")
        with httpx.Client(base_url=idhub.url) as client:
            consent = sign_in(client, client.get(sp.login_url()))
            assert 'name="idhub_consent"' in consent.text
            from tests.sso_support import csrf_token, hidden_fields

            fields = hidden_fields(consent.text)
            fields.update({"csrf_token": csrf_token(consent.text), "idhub_consent": "allow"})
            verdict = deliver(sp, client.post("/saml/sso", data=fields))
            assert verdict["ok"], verdict
            again = deliver(sp, follow(client, client.get(sp.login_url())))
    assert again["ok"], again


def test_a_response_that_could_not_be_recorded_leaves_the_request_answerable(
    idhub: LiveServer, sp: SamlSp
) -> None:
    """The AuthnRequest's id, the assertion id, the participant and `saml.response_issued`
    commit together: when the audit write fails the browser gets a 503, nothing is claimed,
    and the same request (the browser's retry) is answered once the database takes writes."""
    from tests.test_atomic_audit import refused

    with httpx.Client(base_url=idhub.url) as client:
        sign_in(client, client.get(sp.login_url()))  # a session first
        url = sp.login_url(relay_state="/retry")  # one AuthnRequest, sent twice
        with refused(idhub.services.engine, "audit_events", "INSERT"):
            failed = follow(client, client.get(url))
        assert failed.status_code == 503, failed.text[:300]
        assert len(events(idhub.services, "saml.response_issued")) == 1
        retried = follow(client, client.get(url))
    verdict = deliver(sp, retried)
    assert verdict["ok"], verdict
    assert verdict["relay_state"] == "/retry"
    assert len(events(idhub.services, "saml.response_issued")) == 2
