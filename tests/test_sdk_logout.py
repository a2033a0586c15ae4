"""Back-channel logout for systems: a real idhub delivering a real logout token to a Starlette
system built on `idhub.sdk` when the user signs out, and every rule of OpenID Connect
Back-Channel Logout 1.0 section 2.6 / 2.8 checked on tokens signed with idhub's own key."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from authlib.common.security import generate_token
from starlette.applications import Starlette
from starlette.routing import Route

from idhub.oidc.jws import sign
from idhub.sdk import errors as e
from idhub.sdk.logout import (
    BACKCHANNEL_EVENT,
    BackchannelLogoutReceiver,
    LogoutEvent,
    LogoutTokenValidator,
)
from idhub.sdk.starlette import backchannel_logout_endpoint
from tests.conftest import LiveServer, serve_asgi
from tests.sso_support import (
    follow,
    hidden_fields,
    make_user,
    oauth_client,
    register_client,
    sign_in_at,
)

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    return live


def test_signing_out_at_idhub_calls_the_systems_hook(idhub: LiveServer) -> None:
    services, issuer = idhub.services, idhub.url
    dave = make_user(services, "dave", "dave-password-1")
    ended: list[LogoutEvent] = []
    arrived = threading.Event()

    def on_logout(event: LogoutEvent) -> None:
        ended.append(event)
        arrived.set()

    receiver = BackchannelLogoutReceiver(
        LogoutTokenValidator(issuer, client_id="reimburse"), on_logout=on_logout
    )
    app = Starlette(routes=[Route("/bc", backchannel_logout_endpoint(receiver), methods=["POST"])])
    with serve_asgi(app) as system:
        _, secret = register_client(
            services, "reimburse", port=8002, backchannel_logout_uri=system + "/bc"
        )
        client = oauth_client(issuer, "reimburse", secret, port=8002, scope="openid profile")
        with httpx.Client(base_url=issuer) as browser:
            url, _ = client.create_authorization_url(
                f"{issuer}/authorize", code_verifier=generate_token(48), nonce="n-1"
            )
            back = sign_in_at(browser, follow(browser, url), "dave", "dave-password-1")
            assert back.status_code == 302 and "code=" in back.headers["location"]
            (session,) = services.sessions.active_for_user(dave.id)
            _confirm(browser, browser.get("/logout", params={"client_id": "reimburse"}))
        assert arrived.wait(10), "no logout token arrived"
    assert [(x.sid, x.sub) for x in ended] == [(session.sid, dave.sub)]


def _confirm(browser: httpx.Client, page: httpx.Response) -> None:
    """Answers idhub's "sign out?" page, when it asks."""
    if page.status_code != 200 or 'name="confirm"' not in page.text:
        return
    browser.post("/logout", data={**hidden_fields(page.text), "confirm": "yes"})


def _logout_token(idhub: LiveServer, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": idhub.url, "aud": "reimburse", "iat": now, "exp": now + 120,
        "jti": secrets.token_urlsafe(8), "sub": "0f" * 16, "sid": "sid-1",
        "events": {BACKCHANNEL_EVENT: {}},
    }  # fmt: skip
    claims.update(changes)
    kid, key = idhub.services.keys.signer("RS256")
    body = {k: v for k, v in claims.items() if v is not None}
    return sign({"typ": "logout+jwt", "alg": "RS256", "kid": kid}, body, key)


def test_every_rule_of_a_logout_token(idhub: LiveServer) -> None:
    validator = LogoutTokenValidator(idhub.url, client_id="reimburse")
    now = int(time.time())
    cases: list[tuple[type[e.InvalidToken], str]] = [
        (e.NotALogoutToken, _logout_token(idhub, nonce="n-1")),
        (e.MissingClaim, _logout_token(idhub, events=None)),
        (e.NotALogoutToken, _logout_token(idhub, events={"urn:other": {}})),
        (e.NotALogoutToken, _logout_token(idhub, sub=None, sid=None)),
        (e.MissingClaim, _logout_token(idhub, jti=None)),
        (e.MissingClaim, _logout_token(idhub, sid=5)),
        (e.WrongAudience, _logout_token(idhub, aud="oa")),
        (e.WrongIssuer, _logout_token(idhub, iss="https://evil.example")),
        (e.Expired, _logout_token(idhub, iat=now - 600, exp=now + 60)),
        (e.Expired, _logout_token(idhub, exp=now - 60)),
    ]
    for expected, token in cases:
        with pytest.raises(expected):
            validator.validate(token)
    token = _logout_token(idhub, sid=None)  # sub alone is enough
    assert validator.validate(token).sid is None
    with pytest.raises(e.Replayed):
        validator.validate(token)


def test_the_receiver_answers_as_the_spec_says(idhub: LiveServer) -> None:
    failing = [True]
    ended: list[str | None] = []

    def on_logout(event: LogoutEvent) -> None:
        if failing[0]:
            failing[0] = False
            raise RuntimeError("session store down")
        ended.append(event.sid)

    receiver = BackchannelLogoutReceiver(
        LogoutTokenValidator(idhub.url, client_id="reimburse"), on_logout=on_logout
    )
    token = _logout_token(idhub)
    body = urlencode({"logout_token": token}).encode()
    # The hook failed: idhub hears 400 and may retry the same token, which then works once.
    assert receiver.handle_body(body, FORM).status == 400
    ok = receiver.handle_body(body, FORM + "; charset=utf-8")
    assert (ok.status, ok.headers["Cache-Control"], ok.body) == (200, "no-store", None)
    assert ended == ["sid-1"]
    replay = receiver.handle_body(body, FORM)
    assert replay.status == 400 and replay.body == {
        "error": "invalid_request",
        "error_description": "the logout token is not valid",
    }
    assert receiver.handle_body(body, "application/json").status == 400
    twice = urlencode([("logout_token", token), ("logout_token", token)]).encode()
    assert receiver.handle_body(twice, FORM).status == 400
    assert receiver.handle_body(b"", FORM).status == 400
    assert receiver.handle_body(b"logout_token=%ff", FORM).status == 400
    assert receiver.handle_form({"logout_token": [_logout_token(idhub)]}).status == 200
    assert ended == ["sid-1", "sid-1"]
