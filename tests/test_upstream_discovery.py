"""Discovery documents a well-behaved provider never serves: plain-http endpoints under an https
issuer, no PKCE S256, no userinfo endpoint when one is needed, not JSON, a 503. A small ASGI
app serves them with uvicorn on a free port; the provider reaches it through a shared client
that sends the issuer's host there (the normal flow against a real provider, another idhub,
is tests/test_upstream_oidc.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from idhub.adapters.upstream_oidc import OidcUpstream
from idhub.config import UpstreamOidcSettings
from idhub.core.secret import Secret
from idhub.core.upstream import UpstreamFailed
from tests.conftest import _ThreadedServer, free_port, serve_asgi
from tests.slapd import make_tls

ISSUER = "https://login.parent.example"


def document(**changes: Any) -> dict[str, Any]:
    base = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "userinfo_endpoint": f"{ISSUER}/userinfo",
        "code_challenge_methods_supported": ["S256"],
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


@contextlib.contextmanager
def provider(doc: Any, *, status: int = 200, **kw: Any) -> Iterator[OidcUpstream]:
    """The provider, its discovery document served over real HTTP with `status`."""

    async def discovery(_request: Request) -> Response:
        if isinstance(doc, dict | list):
            return JSONResponse(doc, status_code=status)
        return PlainTextResponse(str(doc), status_code=status)

    app = Starlette(routes=[Route("/.well-known/openid-configuration", discovery)])
    settings = UpstreamOidcSettings(
        name="parent", issuer=ISSUER, client_id="c", client_secret=Secret("s"), **kw
    )
    with serve_asgi(app) as url, httpx.Client(transport=_To(url)) as http:
        yield OidcUpstream(settings, http=http)


class _To(httpx.HTTPTransport):
    """Sends every request to the local server (the issuer's name has no DNS here)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = httpx.URL(url)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(
            scheme=self._url.scheme, host=self._url.host, port=self._url.port
        )
        return super().handle_request(request)


def refusal(upstream: OidcUpstream) -> UpstreamFailed:
    with pytest.raises(UpstreamFailed) as failed:
        upstream.authorization_url(
            redirect_uri="https://x/cb", state="s", nonce="n", code_verifier="v" * 43
        )
    return failed.value


def test_a_good_document_gives_the_authorization_url() -> None:
    with provider(document()) as upstream:
        url = upstream.authorization_url(
            redirect_uri="https://idhub.example/login/upstream/parent/callback",
            state="st",
            nonce="nn",
            code_verifier="v" * 43,
        )
    assert url.startswith(f"{ISSUER}/authorize?") and "code_challenge_method=S256" in url


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (document(token_endpoint="http://login.parent.example/token"), "token_endpoint (it must"),
        (document(jwks_uri="http://login.parent.example/jwks"), "jwks_uri (it must be https"),
        (document(authorization_endpoint=None), "no usable authorization_endpoint"),
        (document(code_challenge_methods_supported=["plain"]), "does not support PKCE S256"),
        ("<html>maintenance</html>", "is not a JSON object"),
        (["a", "list"], "is not a JSON object"),
    ],
)
def test_unusable_documents_are_refused(doc: Any, words: str) -> None:
    with provider(doc) as upstream:
        failed = refusal(upstream)
    assert failed.code == "discovery_invalid" and words in str(failed), str(failed)


def test_userinfo_needs_its_endpoint_and_errors_are_unavailable() -> None:
    with provider(document(userinfo_endpoint=None), userinfo=True) as upstream:
        failed = refusal(upstream)
    assert failed.code == "discovery_invalid" and "userinfo_endpoint" in str(failed)
    with provider(document(), status=503) as upstream:
        failed = refusal(upstream)
    assert failed.code == "upstream_unavailable" and "answered 503" in str(failed)


@contextlib.contextmanager
def https_provider(tmp_path: Path, **kw: Any) -> Iterator[tuple[str, Callable[..., OidcUpstream]]]:
    """A discovery document served over real TLS (a test CA's certificate for 127.0.0.1)."""
    tls = make_tls(tmp_path)
    port = free_port()
    issuer = f"https://127.0.0.1:{port}"

    async def discovery(_request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "jwks_uri": f"{issuer}/jwks",
            }
        )

    app = Starlette(routes=[Route("/.well-known/openid-configuration", discovery)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
    )
    server = _ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)

    def make(**settings: Any) -> OidcUpstream:
        return OidcUpstream(
            UpstreamOidcSettings(
                name="parent", issuer=issuer, client_id="c", client_secret=Secret("s"), **settings
            )
        )

    try:
        yield str(tls.ca), make
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_tls_is_verified_against_the_configured_ca(tmp_path: Path) -> None:
    with https_provider(tmp_path) as (ca, make):
        trusted = make(ca_file=Path(ca))
        assert "code_challenge_method=S256" in trusted.authorization_url(
            redirect_uri="https://x/cb", state="s", nonce="n", code_verifier="v" * 43
        )
        trusted.close()
        # Without the company CA the certificate does not verify: unavailable, never ignored.
        stranger = make()
        failed = refusal(stranger)
        stranger.close()
    assert failed.code == "upstream_unavailable" and "ConnectError" in str(failed)
