"""No `xmlsec1` process on the SAML hot paths: a response to an SP-initiated sign-in and the
LogoutResponse to an SP's LogoutRequest, over either binding, are signed in process
(saml/xmldsig.py). python3-saml (the SP) checks what comes back. A spy on `Popen` (the stdlib's
and the name pysaml2 imported) fails the test if anything is started."""

from __future__ import annotations

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
