"""authlib's `AuthorizationServer` and `OAuth2Request` fitted to idhub's framework-free shapes:
requests come in as `OAuthRequestData`, responses leave as `OAuthResponseData`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload

from idhub.core.client_guard import ClientAuthGuard
from idhub.core.clients import ClientRegistry
from idhub.core.clock import Clock
from idhub.core.token_storage import TokenStorage
from idhub.oidc.client_auth import AuthlibClient
from idhub.oidc.messages import Headers, OAuthRequestData, OAuthResponseData
from idhub.oidc.minter import TokenMinter
from idhub.oidc.tokens import AccessTokens


class _Payload(BasicOAuth2Payload):  # type: ignore[misc]
    def __init__(self, params: dict[str, str], multi: dict[str, list[str]]) -> None:
        super().__init__(params)
        if multi:
            self._datalist = defaultdict(list, multi)


class IdhubRequest(OAuth2Request):  # type: ignore[misc]
    """authlib's request built from `OAuthRequestData`."""

    def __init__(self, data: OAuthRequestData) -> None:
        # authlib's constructor re-checks the URI's transport (an ipaddress parse) on every
        # request; idhub builds the URI from its configured issuer, checked once at start-up.
        self.method = data.method
        self.uri = data.uri
        self.headers = Headers(data.headers)
        self._body = None
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None
        params = dict(data.params)
        self.payload = _Payload(params, {k: list(v) for k, v in data.multi.items()})
        self._params = params
        self.idhub_ctx = data.ctx
        self.idhub_reason: str | None = None
        # A grant's write section left for the batch it arrived in (oidc/grant_batch.py).
        self.idhub_deferred: Callable[[], dict[str, Any]] | None = None

    @property
    def form(self) -> dict[str, str]:
        return self._params

    @property
    def args(self) -> dict[str, str]:
        return self._params


class AuthlibServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's server over idhub's registry; it also carries what idhub's grants need, since
    authlib builds each grant from the request and the server alone."""

    def __init__(
        self,
        registry: ClientRegistry,
        *,
        minter: TokenMinter,
        tokens: TokenStorage,
        access_tokens: AccessTokens,
        clock: Clock,
        client_guard: ClientAuthGuard | None = None,
    ) -> None:
        super().__init__(scopes_supported=None)
        self.registry = registry
        self.minter = minter
        self.tokens = tokens
        self.access_tokens = access_tokens
        self.clock = clock
        self.client_guard = client_guard

    def query_client(self, client_id: str) -> AuthlibClient | None:
        client = self.registry.get(client_id) if isinstance(client_id, str) else None
        return AuthlibClient(client, self.registry) if client else None

    def authenticate_client(self, request: Any, methods: Any, endpoint: str = "token") -> Any:
        # Every client authentication (token, introspection, revocation) passes here, so the
        # throttle of secret guessing (core/client_guard.py) is hooked here and nowhere else.
        guard = self.client_guard
        attempt = guard.begin(request.headers, request.form, request.idhub_ctx) if guard else None
        if attempt is not None and attempt.refused:
            raise InvalidClientError(status_code=401, description="too many failed attempts")
        try:
            client = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as exc:
            if attempt is not None:
                attempt.failed()
            # authlib lists the methods it tried; a failed client learns only that it failed.
            if exc.description and exc.description.startswith("The client cannot authenticate"):
                exc.description = "client authentication failed"
            raise
        if attempt is not None:
            attempt.succeeded()
        return client

    def save_token(self, token: Any, request: Any) -> None:
        """Grants store what they issue themselves (refresh families, audit)."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signal bus: audit records are written by the grants."""

    def validate_requested_scope(self, scope: Any) -> None:
        """Scopes are narrowed per client by the grants, not against a global list."""

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request if isinstance(request, OAuth2Request) else IdhubRequest(request)

    def handle_response(self, status: int, body: Any, headers: Any) -> OAuthResponseData:
        return OAuthResponseData(
            status, list(headers), body if isinstance(body, dict) else str(body or "")
        )
