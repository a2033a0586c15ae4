"""Signing in through another OpenID Connect provider: a second idhub, served by uvicorn, is the
upstream (a parent company's IdP). The provider is driven as the sign-in core will drive it:
authorization_url -> a browser stand-in (httpx with a cookie jar) signs in there with a
password -> the callback's parameters -> complete() -> UpstreamIdentity -> the idhub account.
SQLite and PostgreSQL for the upstream's storage."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.common.security import generate_token

from idhub.adapters.upstream_id_token import ProviderKeys, validate_id_token
from idhub.adapters.upstream_oidc import OidcUpstream, build_oidc_accounts, build_oidc_providers
from idhub.bootstrap import Services
from idhub.config import Settings
from idhub.core.clock import FrozenClock, SystemClock
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity
from tests.conftest import LiveServer, free_port
from tests.sso_support import follow, make_user, query_of, sign_in_at

# authlib's httpx integration may announce its move to httpx2; that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The httpx module is deprecated")

CALLBACK = "http://127.0.0.1:18201/login/upstream/parent/callback"
PASSWORD = "alice-password-1"


@pytest.fixture
def upstream(make_live_server: Callable[..., LiveServer], db_url: str) -> LiveServer:
    """The parent company's idhub: signing keys, a person, and downstream idhub registered as a
    confidential client whose redirect URI is downstream's upstream callback."""
    server = make_live_server(db_url)
    server.services.keys.ensure_active(lambda _line: None)
    make_user(
        server.services,
        "alice",
        PASSWORD,
        display_name="王小丽",
        email="Alice@Example.com",
        employee_id="E1001",
    )
    return server


@pytest.fixture
def registered(upstream: LiveServer, known_secrets: Any) -> str:
    _client, secret = upstream.services.clients.register(
        "downstream",
        name="Subsidiary idhub",
        redirect_uris=[CALLBACK],
        scope="openid profile email",
        first_party=True,
    )
    assert secret is not None
    known_secrets.add(secret, PASSWORD)
    return secret


@pytest.fixture
def settings_for(
    make_settings: Callable[..., Settings], tmp_path: Path, sqlite_template: Path
) -> Callable[..., Settings]:
    """Downstream idhub's settings (a database of its own) with an `[upstream.parent]` table
    (extra lines appended)."""
    database = tmp_path / "downstream.db"
    shutil.copyfile(sqlite_template, database)

    def factory(issuer: str, secret: str, extra: str = "") -> Settings:
        toml = (
            "[upstream.parent]\n"
            f'issuer = "{issuer}"\n'
            'client_id = "downstream"\n'
            'client_secret_env = "PARENT_SECRET"\n'
            'label = "Parent company"\n'
            'match = "email"\n'
            'claim = "email"\n' + extra
        )
        return make_settings(f"sqlite:///{database}", toml=toml, env={"PARENT_SECRET": secret})

    return factory


def provider_for(settings: Settings, **kw: Any) -> OidcUpstream:
    [provider] = build_oidc_providers(settings, **kw)
    assert isinstance(provider, OidcUpstream)
    return provider


def start(provider: OidcUpstream) -> tuple[str, str, str, str]:
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    verifier = generate_token(48)
    url = provider.authorization_url(
        redirect_uri=CALLBACK, state=state, nonce=nonce, code_verifier=verifier
    )
    return url, state, nonce, verifier


def sign_in_upstream(upstream: LiveServer, url: str, username: str = "alice") -> dict[str, str]:
    """The browser's part: follow to the upstream's login page, sign in, and stop at the
    redirect back to downstream's callback; returns its query parameters."""
    with httpx.Client(base_url=upstream.url) as browser:
        page = follow(browser, url)
        answer = sign_in_at(browser, page, username, PASSWORD)
    assert answer.status_code == 302, answer.text[:300]
    location = answer.headers["location"]
    assert location.startswith(CALLBACK + "?")
    return query_of(location)


def run_flow(upstream: LiveServer, provider: OidcUpstream) -> tuple[UpstreamIdentity, str]:
    url, state, nonce, verifier = start(provider)
    params = sign_in_upstream(upstream, url)
    assert params["state"] == state
    identity = provider.complete(
        redirect_uri=CALLBACK, params=params, nonce=nonce, code_verifier=verifier
    )
    return identity, nonce


# ------------------------------------------------------------------ the flow that works


def test_sign_in_through_another_idhub_maps_to_the_account(
    upstream: LiveServer,
    registered: str,
    settings_for: Callable[..., Settings],
    make_services: Callable[..., Services],
) -> None:
    settings = settings_for(upstream.url, registered)
    provider = provider_for(settings)
    assert (provider.name, provider.kind, provider.label) == ("parent", "oidc", "Parent company")
    url, _state, _nonce, _verifier = start(provider)
    query = query_of(url)
    assert url.startswith(upstream.url + "/authorize?")
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["client_id"] == "downstream" and query["redirect_uri"] == CALLBACK
    assert query["scope"] == "openid email profile" and query["nonce"]

    identity, _ = run_flow(upstream, provider)
    alice = upstream.services.identity.get_user_by_username("alice")
    assert alice is not None
    assert identity.provider == "parent" and identity.subject == alice.sub
    assert identity.claims["email"] == "Alice@Example.com"
    assert identity.claims["name"] == "王小丽" and identity.claims["iss"] == upstream.url
    assert identity.amr == ("fed",) and identity.claims["amr"] == "pwd"
    assert "nonce" not in identity.claims and "aud" not in identity.claims

    # Downstream has its own record of the same person, spelled in its own case.
    downstream = make_services(settings)
    downstream.migrate()
    mine = downstream.identity.create_user(username="wangxl", email="alice@example.com")
    accounts = build_oidc_accounts(settings, downstream.identity)
    assert accounts.find(identity) == mine


def test_userinfo_is_merged_and_must_be_about_the_same_subject(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    provider = provider_for(settings_for(upstream.url, registered, "userinfo = true\n"))
    identity, _ = run_flow(upstream, provider)
    assert identity.claims["email"] == "Alice@Example.com"
    assert identity.claims["sub"] == identity.subject


def test_a_rotated_upstream_key_is_fetched_again(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    provider = provider_for(settings_for(upstream.url, registered))
    first, _ = run_flow(upstream, provider)
    upstream.services.keys.rotate()
    second, _ = run_flow(upstream, provider)
    assert second.subject == first.subject


# ------------------------------------------------------------------ refusals in the flow


def test_a_discovery_document_naming_another_issuer_is_refused(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    provider = provider_for(settings_for(upstream.url + "/", registered))
    with pytest.raises(UpstreamFailed) as failed:
        start(provider)
    assert failed.value.code == "discovery_issuer"
    assert upstream.url in str(failed.value) and "identical" in str(failed.value)


def test_a_wrong_nonce_is_refused(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    provider = provider_for(settings_for(upstream.url, registered))
    url, _state, _nonce, verifier = start(provider)
    params = sign_in_upstream(upstream, url)
    with pytest.raises(UpstreamFailed) as failed:
        provider.complete(
            redirect_uri=CALLBACK, params=params, nonce="another-nonce", code_verifier=verifier
        )
    assert failed.value.code == "id_token_nonce"


def test_a_wrong_code_verifier_is_refused_by_the_upstream(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    provider = provider_for(settings_for(upstream.url, registered))
    url, _state, nonce, _verifier = start(provider)
    params = sign_in_upstream(upstream, url)
    with pytest.raises(UpstreamFailed) as failed:
        provider.complete(
            redirect_uri=CALLBACK, params=params, nonce=nonce, code_verifier=generate_token(48)
        )
    assert failed.value.code == "code_refused" and "invalid_grant" in str(failed.value)


def test_an_expired_id_token_is_refused(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    clock = FrozenClock(SystemClock().now())
    provider = provider_for(settings_for(upstream.url, registered), clock=clock)
    url, _state, nonce, verifier = start(provider)
    params = sign_in_upstream(upstream, url)
    clock.advance(2 * 3600)  # downstream's clock far past the token's exp (and the skew)
    with pytest.raises(UpstreamFailed) as failed:
        provider.complete(redirect_uri=CALLBACK, params=params, nonce=nonce, code_verifier=verifier)
    assert failed.value.code == "id_token_expired"


def test_callback_errors_and_a_foreign_iss_are_refused(
    upstream: LiveServer, registered: str, settings_for: Callable[..., Settings]
) -> None:
    provider = provider_for(settings_for(upstream.url, registered))
    cases = [
        ({"error": "access_denied", "error_description": "the person said no"}, "code_missing"),
        ({"code": "abc", "iss": "https://evil.example"}, "callback_issuer"),
        ({"state": "s"}, "code_missing"),
        ({"code": "not-a-code", "iss": upstream.url}, "code_refused"),
    ]
    for params, code in cases:
        with pytest.raises(UpstreamFailed) as failed:
            provider.complete(redirect_uri=CALLBACK, params=params, nonce="n", code_verifier="v")
        assert failed.value.code == code, params
    assert "the person said no" in str(_refusal(provider, cases[0][0]))


def _refusal(provider: OidcUpstream, params: dict[str, str]) -> UpstreamFailed:
    with pytest.raises(UpstreamFailed) as failed:
        provider.complete(redirect_uri=CALLBACK, params=params, nonce="n", code_verifier="v")
    return failed.value


def test_an_upstream_that_is_down_or_hangs_fails_cleanly(
    settings_for: Callable[..., Settings],
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UpstreamFailed) as failed:
        start(provider_for(settings_for(closed, "s")))
    assert failed.value.code == "upstream_unavailable" and "ConnectError" in str(failed.value)
    with silent_server() as hanging:
        provider = provider_for(settings_for(hanging, "s", "timeout = 0.5\n"))
        with pytest.raises(UpstreamFailed) as failed:
            start(provider)
    assert failed.value.code == "upstream_unavailable" and "timed out" in str(failed.value)


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: an upstream stuck behind a dead proxy."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


# ------------------------------------------------------------------ the ID token itself


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(part: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def test_tampered_foreign_and_unsigned_id_tokens_are_refused(
    upstream: LiveServer,
    registered: str,
    settings_for: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real ID token from the upstream, then changed the ways an attacker would."""
    captured: dict[str, Any] = {}
    provider = provider_for(settings_for(upstream.url, registered))
    real_validate = validate_id_token

    def capture(token: str, **kw: Any) -> dict[str, Any]:
        captured.update(token=token, **kw)
        return real_validate(token, **kw)

    monkeypatch.setattr("idhub.adapters.upstream_oidc.validate_id_token", capture)
    run_flow(upstream, provider)
    monkeypatch.undo()
    token: str = captured.pop("token")
    keys = ProviderKeys(lambda: httpx.get(upstream.url + "/jwks").json(), SystemClock())
    checks = {**captured, "keys": keys}
    assert real_validate(token, **checks)["iss"] == upstream.url

    header, payload, signature = _segments(token)
    claims = _unb64(payload)

    def refused(candidate: str, **changes: Any) -> str:
        with pytest.raises(UpstreamFailed) as failed:
            real_validate(candidate, **{**checks, **changes})
        return failed.value.code

    # The payload changed under a valid signature (another person's sub).
    forged = _b64({**claims, "sub": "someone-else"})
    assert refused(f"{header}.{forged}.{signature}") == "id_token_signature"
    # alg none, with or without a signature.
    none = _b64({"alg": "none", "typ": "JWT"})
    assert refused(f"{none}.{payload}.") == "id_token_alg"
    assert refused(f"{none}.{payload}.{signature}") == "id_token_alg"
    # HS256 keyed with the client secret (the classic key confusion) is not on the list.
    hs = _b64({"alg": "HS256", "typ": "JWT"})
    assert refused(f"{hs}.{payload}.{signature}") == "id_token_alg"
    # A token for another client, and for this client from someone else's issuer.
    assert refused(token, client_id="another-client") == "id_token_audience"
    assert refused(token, issuer="https://login.example") == "id_token_issuer"
    # Expired, and from the future, beyond the skew.
    assert refused(token, now=claims["exp"] + 61) == "id_token_expired"
    assert refused(token, now=claims["iat"] - 61) == "id_token_not_yet_valid"
    assert real_validate(token, **{**checks, "now": claims["exp"] + 59})["sub"]
    # A key id the provider never published (a fresh fetch still does not have it).
    odd = _b64({**_unb64(header), "kid": "no-such-key"})
    assert refused(f"{odd}.{payload}.{signature}") == "id_token_key_unknown"
    assert refused("not a jwt") == "id_token_invalid"
    assert refused("") == "id_token_missing"
