"""The SDK's framework-free functions in a WSGI system the way Flask runs them: Werkzeug's
request (what `flask.request` is) and its threaded server, against a real idhub. The code in
the app below is docs/sdk.md's Flask example with routing done by hand."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from idhub.oidc.jws import sign
from idhub.sdk import InvalidToken, TokenValidator
from idhub.sdk import errors as e
from idhub.sdk.bearer import authenticate, bearer_token, challenge
from idhub.sdk.logout import (
    BACKCHANNEL_EVENT,
    BackchannelLogoutReceiver,
    LogoutEvent,
    LogoutTokenValidator,
)
from idhub.sdk.replies import Reply
from tests.conftest import LiveServer, free_port

AUD = "reimburse"


@pytest.fixture
def idhub(make_live_server: Callable[..., LiveServer], sqlite_db_url: str) -> LiveServer:
    live = make_live_server(sqlite_db_url)
    live.services.keys.ensure_active(lambda _line: None)
    return live


def wsgi_system(validator: TokenValidator, receiver: BackchannelLogoutReceiver) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/backchannel-logout":
            reply = receiver.handle_form(request.form)
        else:
            try:
                claims = authenticate(validator, request.headers.get("Authorization"))
                reply = Reply(200, {}, {"sub": claims["sub"]})
            except InvalidToken as exc:
                reply = challenge(exc)
        response = Response(reply.body_bytes(), status=reply.status, headers=reply.all_headers())
        return response(environ, start_response)

    return app


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        thread.join(5)


def _access_token(idhub: LiveServer, **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": idhub.url, "sub": "ab" * 16, "aud": AUD, "client_id": "oa", "iat": now,
              "exp": now + 600, "jti": secrets.token_urlsafe(8), **changes}  # fmt: skip
    kid, key = idhub.services.keys.signer("ES256")
    return sign({"typ": "at+jwt", "alg": "ES256", "kid": kid}, claims, key)


def _logout_token(idhub: LiveServer) -> str:
    now = int(time.time())
    claims = {"iss": idhub.url, "aud": AUD, "iat": now, "exp": now + 120, "sid": "sid-9",
              "jti": secrets.token_urlsafe(8), "events": {BACKCHANNEL_EVENT: {}}}  # fmt: skip
    kid, key = idhub.services.keys.signer("RS256")
    return sign({"typ": "logout+jwt", "alg": "RS256", "kid": kid}, claims, key)


def test_a_wsgi_system_guards_its_api_and_receives_logouts(idhub: LiveServer) -> None:
    ended: list[LogoutEvent] = []
    validator = TokenValidator.from_discovery(idhub.url, audience=AUD)
    receiver = BackchannelLogoutReceiver(
        LogoutTokenValidator(idhub.url, client_id=AUD), on_logout=ended.append
    )
    with serving(wsgi_system(validator, receiver)) as url, httpx.Client(base_url=url) as http:
        ok = http.get("/reports", headers={"Authorization": f"Bearer {_access_token(idhub)}"})
        assert ok.status_code == 200 and ok.json() == {"sub": "ab" * 16}

        for headers in ({}, {"Authorization": "Basic b2E6eA=="}):
            missing = http.get("/reports", headers=headers)
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == 'Bearer realm="idhub"'
        expired = _access_token(idhub, exp=int(time.time()) - 120)
        refused = http.get("/reports", headers={"Authorization": f"Bearer {expired}"})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer realm="idhub", error="invalid_token"'
        assert refused.json()["error"] == "invalid_token"
        assert "expired" not in refused.text  # the reason is for logs, not for the caller

        token = _logout_token(idhub)
        done = http.post("/backchannel-logout", data={"logout_token": token})
        assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
        assert [x.sid for x in ended] == ["sid-9"]
        again = http.post("/backchannel-logout", data={"logout_token": token})
        assert again.status_code == 400 and again.json()["error"] == "invalid_request"


def test_an_unreachable_idhub_is_a_503_with_retry_after() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    validator = TokenValidator(dead, audience=AUD)
    receiver = BackchannelLogoutReceiver(
        LogoutTokenValidator(dead, client_id=AUD), on_logout=lambda _event: None
    )
    token = "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.e30.c2ln"
    with serving(wsgi_system(validator, receiver)) as url:
        answer = httpx.get(url + "/reports", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.json()["error"] == "temporarily_unavailable"


def test_reading_the_authorization_header() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("  bearer   abc  ") == "abc"
    for value in (None, "", "   ", "Basic eA==", "Bearerabc"):
        with pytest.raises(e.MissingToken):
            bearer_token(value)
    for value in ("Bearer", "Bearer a b"):
        with pytest.raises(e.MalformedToken):
            bearer_token(value)
