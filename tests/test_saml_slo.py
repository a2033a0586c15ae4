"""SAML Single Logout both ways, with python3-saml as the SP: an SP-initiated LogoutRequest
(Redirect binding, signed) ends the idhub session and gets a signed LogoutResponse; ending the
session in idhub sends every SAML SP that took part a signed back-channel LogoutRequest (SOAP),
retried and recorded like OpenID Connect back-channel logout."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select

from idhub.adapters.db import logout_deliveries
from idhub.core.audit import Actor
from tests.conftest import LiveServer
from tests.saml_sp import SamlSp, running_sp
from tests.sso_support import events, make_user
from tests.test_saml_sso import PASSWORD, deliver, follow, sign_in


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    live = make_live_server(db_url)
    live.services.keys.ensure_active(lambda _line: None)
    make_user(live.services, "alice", PASSWORD, email="alice@example.com")
    return live


@pytest.fixture
def sps(idhub: LiveServer) -> Iterator[tuple[SamlSp, SamlSp]]:
    with running_sp(idhub.url) as erp, running_sp(idhub.url, entity_path="/md2") as archive:
        for name, sp in (("erp", erp), ("archive", archive)):
            idhub.services.saml_sps.add(
                name, metadata_xml=sp.metadata(), domain=name, first_party=True
            )
        yield erp, archive


def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sp_initiated_logout_ends_the_session_and_tells_the_other_sp(
    idhub: LiveServer, sps: tuple[SamlSp, SamlSp]
) -> None:
    erp, archive = sps
    with httpx.Client(base_url=idhub.url) as client:
        signed_in = deliver(erp, sign_in(client, client.get(erp.login_url())))
        assert deliver(archive, follow(client, client.get(archive.login_url())))["ok"]
        answer = client.get(erp.logout_url(signed_in["name_id"], signed_in["session_index"]))
        assert answer.status_code == 303
        location = answer.headers["location"]
        assert location.startswith(erp.url + "/sls?SAMLResponse=")
        verdict = httpx.get(location).json()
        assert verdict["errors"] == [], verdict
        # The session is over: signing in again needs the password.
        assert "/login" in str(follow(client, client.get(erp.login_url())).url)
    wait_for(lambda: archive.logout_requests)
    notice = archive.logout_requests[0]
    assert notice["signed"] and notice["valid"], notice
    assert events(idhub.services, "saml.logout_answered")[-1]["target"] == "erp"


def test_idhub_initiated_logout_reaches_every_saml_sp(
    idhub: LiveServer, sps: tuple[SamlSp, SamlSp]
) -> None:
    erp, archive = sps
    with httpx.Client(base_url=idhub.url) as client:
        first = deliver(erp, sign_in(client, client.get(erp.login_url())))
        second = deliver(archive, follow(client, client.get(archive.login_url())))
    alice = idhub.services.identity.get_user_by_username("alice")
    assert alice is not None
    ended = idhub.services.logout.logout_user_everywhere(
        alice.id, reason="admin", actor=Actor("admin")
    )
    assert ended == 1
    wait_for(lambda: erp.logout_requests and archive.logout_requests)
    for sp, session in ((erp, first), (archive, second)):
        notice = sp.logout_requests[0]
        assert notice["signed"] and notice["valid"], notice
        assert notice["name_id"] == session["name_id"]
        assert notice["session_indexes"] == [session["session_index"]]

    # The SP has the request before the deliverer has its answer and marks the row: wait
    # for the rows rather than reading them at the moment the SP saw the request.
    def deliveries() -> set[tuple[str, str, str]]:
        with idhub.services.engine.connect() as conn:
            rows = conn.execute(select(logout_deliveries)).all()
        return {(r.protocol, r.client_id, r.status) for r in rows}

    delivered = {("saml", "erp", "delivered"), ("saml", "archive", "delivered")}
    wait_for(lambda: deliveries() == delivered)
    assert deliveries() == delivered


def test_an_unreachable_sp_is_retried_and_recorded(
    idhub: LiveServer, sps: tuple[SamlSp, SamlSp]
) -> None:
    erp, _ = sps
    with running_sp(idhub.url, entity_path="/gone") as gone:
        idhub.services.saml_sps.add(
            "gone", metadata_xml=gone.metadata(), domain="oa", first_party=True
        )
        with httpx.Client(base_url=idhub.url) as client:
            assert deliver(gone, sign_in(client, client.get(gone.login_url())))["ok"]
    # The SP's server has stopped: the delivery fails and stays pending for a retry.
    alice = idhub.services.identity.get_user_by_username("alice")
    assert alice is not None
    idhub.services.logout.logout_user_everywhere(alice.id, reason="admin", actor=Actor("admin"))
    wait_for(lambda: events(idhub.services, "logout.backchannel_failed"))
    failed = events(idhub.services, "logout.backchannel_failed")[-1]
    assert failed["target"] == "gone"
    assert failed["details"]["will_retry"] is True
    del erp


def test_sp_initiated_logout_over_the_post_binding(
    idhub: LiveServer, sps: tuple[SamlSp, SamlSp]
) -> None:
    from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
    from onelogin.saml2.utils import OneLogin_Saml2_Utils

    erp, _ = sps
    settings = erp.settings()
    with httpx.Client(base_url=idhub.url) as client:
        session = deliver(erp, sign_in(client, client.get(erp.login_url())))
        request = OneLogin_Saml2_Logout_Request(
            settings,
            name_id=session["name_id"],
            session_index=session["session_index"],
            nq=None,
            name_id_format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
        )
        signed = OneLogin_Saml2_Utils.add_sign(
            request.get_xml(),
            settings.get_sp_key(),
            settings.get_sp_cert(),
            sign_algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
            digest_algorithm="http://www.w3.org/2001/04/xmlenc#sha256",
        )
        answer = client.post(
            "/saml/slo",
            data={"SAMLRequest": base64.b64encode(signed).decode(), "RelayState": "/bye"},
        )
        assert answer.status_code == 303, answer.text[:300]
        assert answer.headers["location"].startswith(erp.url + "/sls?SAMLResponse=")
        assert httpx.get(answer.headers["location"]).json()["errors"] == []
        assert "/login" in str(follow(client, client.get(erp.login_url())).url)


def test_an_unsigned_logout_request_is_refused(
    idhub: LiveServer, sps: tuple[SamlSp, SamlSp]
) -> None:
    from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request

    erp, _ = sps
    with httpx.Client(base_url=idhub.url) as client:
        session = deliver(erp, sign_in(client, client.get(erp.login_url())))
        request = OneLogin_Saml2_Logout_Request(erp.settings(), name_id=session["name_id"])
        answer = client.get("/saml/slo", params={"SAMLRequest": request.get_request()})
        assert answer.status_code == 400 and "location" not in answer.headers
        # Still signed in: the next sign-in needs no password.
        assert deliver(erp, follow(client, client.get(erp.login_url())))["ok"]
