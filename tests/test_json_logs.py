"""`idhub serve --log-format json`: every line is one JSON object, each request has an access
record (request id, route template, status, latency, client id), and a real sign-in, code
exchange, refresh, introspection and userinfo leave no password, secret, code or token in it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from authlib.common.security import generate_token

from idhub.bootstrap import Services
from idhub.config import load_settings
from tests.serve_support import serve, write_config
from tests.sso_support import follow, make_user, oauth_client, register_client, sign_in_at

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")


def test_a_real_flow_logs_json_without_secrets(
    tmp_path: Path, make_services: Callable[..., Services]
) -> None:
    served = write_config(tmp_path)
    services = make_services(load_settings(served.config, env={}))
    services.migrate()
    make_user(services, "alice", "alice-password-1")
    _, secret = register_client(services, "oa")
    handled = {"alice-password-1", secret}
    with serve(served, "--log-format", "json"):
        issuer = served.url
        oa = oauth_client(issuer, "oa", secret, scope="openid profile offline_access")
        verifier = generate_token(48)
        url, _ = oa.create_authorization_url(
            f"{issuer}/authorize", code_verifier=verifier, nonce=secrets.token_urlsafe(8)
        )
        request_id = "trace-0123456789"
        with httpx.Client(base_url=issuer, headers={"X-Request-ID": request_id}) as browser:
            callback = sign_in_at(browser, follow(browser, url), "alice", "alice-password-1")
        location = callback.headers["location"]
        handled.add(dict(httpx.URL(location).params)["code"])
        token = oa.fetch_token(
            f"{issuer}/token", authorization_response=location, code_verifier=verifier
        )
        handled.update({token["access_token"], token["refresh_token"], token["id_token"]})
        again = oa.refresh_token(f"{issuer}/token", refresh_token=token["refresh_token"])
        handled.update({again["access_token"], again["refresh_token"]})
        inspected = httpx.post(
            f"{issuer}/introspect", data={"token": again["access_token"]}, auth=("oa", secret)
        )
        assert inspected.json()["active"] is True
        assert oa.get(f"{issuer}/userinfo").status_code == 200
        # A token in a query string of a page that does not exist.
        httpx.get(f"{issuer}/nowhere", params={"access_token": again["access_token"]})
    output = served.output.read_text(encoding="utf-8")
    for value in handled:
        assert value not in output
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    access = [r for r in records if r["logger"] == "idhub.access"]
    by_route = {(r["method"], r["route"]): r for r in access}
    token_record = by_route[("POST", "/token")]
    assert token_record["status"] == 200 and token_record["client_id"] == "oa"
    assert token_record["latency_ms"] > 0 and len(token_record["request_id"]) >= 8
    assert by_route[("POST", "/introspect")]["client_id"] == "oa"
    assert by_route[("GET", "/authorize")]["client_id"] == "oa"
    assert by_route[("GET", "unmatched")]["status"] == 404
    assert {r["request_id"] for r in access if r["route"] == "/login"} == {request_id}
    # uvicorn's own access line (raw target, no route) gives way to idhub's record.
    assert not [r for r in records if r["logger"] == "uvicorn.access"]
