"""Two idhub replicas sharing one PostgreSQL behave as one provider: a user signs in on one and
is known on the other, codes and refresh tokens cross over, revocation and logout on one hold on
the other, and keys or clients added through one are served by the other."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import httpx
import pytest
from authlib.common.security import generate_token

from tests.conftest import LiveServer
from tests.sso_support import (
    follow,
    make_user,
    oauth_client,
    query_of,
    register_client,
    sign_in_at,
    validate_id_token,
)

pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")


@pytest.fixture
def replicas(
    make_live_server: Callable[..., LiveServer], pg_database: str, db_url: str
) -> tuple[LiveServer, LiveServer]:
    if not db_url.startswith("postgresql"):
        pytest.skip("replicas share PostgreSQL")
    first = make_live_server(db_url)
    second = make_live_server(db_url, issuer=first.url)
    return first, second


def _eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_sign_in_on_one_replica_is_single_sign_on_on_the_other(
    replicas: tuple[LiveServer, LiveServer], known_secrets
) -> None:
    a, b = replicas
    issuer = a.url
    make_user(a.services, "bob", "bob-password-1")
    _, oa_secret = register_client(a.services, "oa", port=8001)
    _, rb_secret = register_client(a.services, "reimburse", port=8002)
    known_secrets.add(oa_secret, rb_secret, "bob-password-1")
    oa = oauth_client(issuer, "oa", oa_secret, port=8001)
    rb = oauth_client(issuer, "reimburse", rb_secret, port=8002, scope="openid offline_access")

    with httpx.Client(base_url=a.url) as browser:
        verifier = generate_token(48)
        url, _ = oa.create_authorization_url(
            f"{a.url}/authorize", code_verifier=verifier, nonce=secrets.token_urlsafe(8)
        )
        sign_in_at(browser, follow(browser, url), "bob", "bob-password-1")
        # The same browser (same cookie) reaches replica B: no login page, straight to a code.
        verifier2, nonce2 = generate_token(48), secrets.token_urlsafe(8)
        url2, _ = rb.create_authorization_url(
            f"{b.url}/authorize", code_verifier=verifier2, nonce=nonce2
        )
        second = browser.get(url2)
    assert second.status_code == 302, second.text[:300]
    location = second.headers["location"]
    assert query_of(location)["iss"] == issuer
    # The code minted by B is redeemed at A; the refresh token from A is rotated at B.
    token = rb.fetch_token(
        f"{a.url}/token", authorization_response=location, code_verifier=verifier2
    )
    known_secrets.add(token["access_token"], token["refresh_token"], token["id_token"])
    claims = validate_id_token(issuer, token["id_token"], client_id="reimburse", nonce=nonce2)
    refreshed = httpx.post(
        f"{b.url}/token",
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=("reimburse", rb_secret),
    )
    assert refreshed.status_code == 200, refreshed.text
    known_secrets.add(refreshed.json()["access_token"], refreshed.json()["refresh_token"])

    def refresh_at_a(refresh_token: str) -> httpx.Response:
        return httpx.post(
            f"{a.url}/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=("reimburse", rb_secret),
        )

    # The rotated-out token again at A, within the grace window: A hands back the successor
    # B issued (the family and its successor live in the database; docs/oidc.md).
    retry = refresh_at_a(token["refresh_token"])
    assert retry.status_code == 200, retry.text
    assert retry.json()["refresh_token"] == refreshed.json()["refresh_token"]
    known_secrets.add(retry.json()["access_token"])
    newer = refresh_at_a(refreshed.json()["refresh_token"])
    assert newer.status_code == 200, newer.text
    known_secrets.add(newer.json()["access_token"], newer.json()["refresh_token"])
    # Once the successor was used, the old token coming back is reuse, detected at A.
    reuse = refresh_at_a(token["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    bob = a.services.identity.get_user_by_username("bob")
    assert bob is not None and claims["sub"] == bob.sub
    (session,) = b.services.sessions.active_for_user(bob.id)
    assert set(session.clients) == {"oa", "reimburse"}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_revocation_keys_and_clients_reach_the_other_replica(
    replicas: tuple[LiveServer, LiveServer], known_secrets
) -> None:
    a, b = replicas
    a.services.keys.ensure_active(lambda _line: None)
    _client, secret = a.services.clients.register(
        "batch", grant_types=("client_credentials",), scope="authz", allowed_audiences=("idhub",)
    )
    assert secret is not None
    known_secrets.add(secret)

    def token_from(server: LiveServer) -> httpx.Response:
        return httpx.post(
            f"{server.url}/token",
            data={"grant_type": "client_credentials", "resource": "idhub"},
            auth=("batch", secret),
        )

    # A client registered through A can authenticate at B (within B's cache refresh).
    assert _eventually(lambda: token_from(b).status_code == 200)
    access = token_from(a).json()["access_token"]
    known_secrets.add(access)

    def active_at(server: LiveServer, token: str) -> bool:
        response = httpx.post(
            f"{server.url}/introspect", data={"token": token}, auth=("batch", secret)
        )
        assert response.status_code == 200, response.text
        return bool(response.json()["active"])

    assert active_at(b, access)
    revoked = httpx.post(f"{b.url}/revoke", data={"token": access}, auth=("batch", secret))
    assert revoked.status_code == 200
    assert not active_at(a, access)

    # A key rotated in through A is published and trusted by B.
    a.services.keys.rotate()
    kids_a = {k["kid"] for k in httpx.get(f"{a.url}/jwks").json()["keys"]}
    assert _eventually(
        lambda: kids_a <= {k["kid"] for k in httpx.get(f"{b.url}/jwks").json()["keys"]}
    ), "replica B does not publish the key rotated in through A"
    fresh = token_from(a).json()["access_token"]
    known_secrets.add(fresh)
    assert active_at(b, fresh)
