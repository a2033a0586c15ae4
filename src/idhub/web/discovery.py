"""`/.well-known/openid-configuration` and `/jwks`: what a relying party needs to use idhub.

Both are served from pre-serialised bytes (the JWKS re-serialised only when the key set
changes), so they cost about as much as a static file.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from idhub.bootstrap import Services
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
    }


def routes(services: Services) -> list[BaseRoute]:
    config_body = json.dumps(configuration(services.settings.server.issuer)).encode()
    headers = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}
    cached: dict[str, Any] = {"source": None, "body": b""}

    async def openid_configuration(request: Request) -> Response:
        return Response(config_body, media_type=JSON, headers=headers)

    async def jwks(request: Request) -> Response:
        current = services.keys.jwks()
        if current is not cached["source"]:
            cached["body"] = json.dumps(current).encode()
            cached["source"] = current
        return Response(cached["body"], media_type="application/jwk-set+json", headers=headers)

    return [
        Route("/.well-known/openid-configuration", openid_configuration, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", openid_configuration, methods=["GET"]),
        Route("/jwks", jwks, methods=["GET"]),
    ]
