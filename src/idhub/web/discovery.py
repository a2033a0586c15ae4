"""`/.well-known/openid-configuration` and `/jwks`: what a relying party needs to use idhub.

Both are served from pre-serialised bytes (the JWKS re-serialised only when the key set
changes), so they cost about as much as a static file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from idhub.bootstrap import Services
from idhub.core.assurance import ACR_VALUES
from idhub.core.claims import CLAIMS_SUPPORTED, STANDARD_SCOPES
from idhub.core.clients import AUTH_METHODS, GRANT_TYPES, IDHUB_API_SCOPES, SIGNING_ALGS

JSON = "application/json"


def configuration(issuer: str) -> dict[str, Any]:
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "userinfo_endpoint": f"{base}/userinfo",
        "jwks_uri": f"{base}/jwks",
        "introspection_endpoint": f"{base}/introspect",
        "revocation_endpoint": f"{base}/revoke",
        "end_session_endpoint": f"{base}/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "userinfo_signing_alg_values_supported": ["none"],
        "scopes_supported": [*STANDARD_SCOPES, *sorted(IDHUB_API_SCOPES)],
        "claims_supported": list(CLAIMS_SUPPORTED),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGS),
        "introspection_endpoint_auth_methods_supported": [m for m in AUTH_METHODS if m != "none"],
        "revocation_endpoint_auth_methods_supported": [m for m in AUTH_METHODS if m != "none"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": False,
        "access_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "ui_locales_supported": ["zh-CN", "en"],
        "acr_values_supported": list(ACR_VALUES),
    }


class _StaticJson:
    """A bare ASGI endpoint answering GET with pre-built bytes: discovery and JWKS are fetched
    by every relying party and load balancer, so they skip the Request/Response machinery."""

    def __init__(self, body: Callable[[], bytes], media_type: str) -> None:
        self._body = body
        self._media_type = media_type.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._body()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self._media_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"public, max-age=300"),
                    (b"access-control-allow-origin", b"*"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _JwksBody:
    """The JWKS as bytes, serialised again only when the key set object changes."""

    def __init__(self, jwks: Callable[[], dict[str, Any]]) -> None:
        self._jwks = jwks
        self._source: dict[str, Any] | None = None
        self._body = b""

    def __call__(self) -> bytes:
        current = self._jwks()
        if current is not self._source:
            self._body = json.dumps(current).encode()
            self._source = current
        return self._body


def routes(services: Services) -> list[BaseRoute]:
    config_body = json.dumps(configuration(services.settings.server.issuer)).encode()
    metadata = _StaticJson(lambda: config_body, JSON)
    # Looked up per request: the key store (and the secret it needs) is built on first use.
    jwks = _StaticJson(_JwksBody(lambda: services.keys.jwks()), "application/jwk-set+json")
    return [
        Route("/.well-known/openid-configuration", metadata, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
        Route("/jwks", jwks, methods=["GET"]),
    ]
