"""Client authentication at the token, introspection and revocation endpoints.

`client_secret_basic` and `client_secret_post` run through authlib's built-in methods against
`AuthlibClient.check_client_secret` (HMAC, constant time); `none` is for public clients (PKCE
is then enforced by the grant); `private_key_jwt` (RFC 7523) is implemented here: the
assertion is verified against the client's registered JWKS, must be addressed to the token
endpoint or the issuer, and its `jti` is accepted once.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from joserfc import jwk
from joserfc.errors import JoseError

from idhub.core.clients import Client, ClientRegistry
from idhub.core.clock import Clock
from idhub.core.token_storage import AssertionLedger
from idhub.oidc import jws

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CONFIDENTIAL_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
ALL_METHODS = [*CONFIDENTIAL_METHODS, "none"]
# An assertion may live at most an hour (authlib's client default), which bounds the replay table.
MAX_ASSERTION_LIFETIME = 3600 + 60
LEEWAY = 30


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(client id, secret) of `Authorization: Basic ...` (both form-urlencoded inside, RFC 6749
    2.3.1); None when nothing usable follows. The scheme is the caller's to check."""
    _, _, credentials = header.strip().partition(" ")
    try:
        # What `base64.b64decode(..., validate=True)` runs (a non-ASCII str is its
        # ValueError, a character outside the alphabet or bad padding its binascii.Error),
        # without its two Python calls around it: asked once per client authentication.
        decoded = binascii.a2b_base64(credentials.strip(), strict_mode=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, colon, secret = decoded.partition(":")
    # `unquote` answers a value without `%` as it is; most ids and secrets have none.
    if "%" in client_id:
        client_id = unquote(client_id)
    # No client id holds a NUL (and PostgreSQL cannot even look one up).
    if not colon or not client_id or "\x00" in client_id:
        return None
    return client_id, unquote(secret) if "%" in secret else secret


def _basic_client_id(header: str) -> str | None:
    """The client id of `Authorization: Basic ...`; None when nothing usable follows."""
    credentials = basic_credentials(header)
    return credentials[0] if credentials is not None else None


def credential_problem(headers: Mapping[str, str], form: Mapping[str, str]) -> OAuth2Error | None:
    """What is wrong with how a request presents client credentials, before any is checked.

    `Authorization: Basic` with nothing usable after it is `invalid_client` (RFC 6749 5.2);
    more than one authentication method in one request (a Basic header and a secret or an
    assertion in the body, or a body `client_id` naming another client) is `invalid_request`
    (RFC 6749 2.3: "MUST NOT use more than one authentication method").
    """
    header = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    basic = header.strip().lower().startswith("basic")
    basic_id = _basic_client_id(header) if basic else None
    if basic and basic_id is None:
        return InvalidClientError(status_code=401, description="the Basic credentials are unusable")
    methods = [
        basic,
        "client_secret" in form,
        "client_assertion" in form or "client_assertion_type" in form,
    ]
    if sum(methods) > 1:
        return InvalidRequestError("use one client authentication method per request")
    named = form.get("client_id")
    if basic_id is not None and named and named != basic_id:
        return InvalidRequestError("client_id does not match the Basic credentials")
    return None


class AuthlibClient:
    """authlib's `ClientMixin` over a registered `Client`."""

    __slots__ = ("_registry", "client")

    def __init__(self, client: Client, registry: ClientRegistry) -> None:
        self.client = client
        self._registry = registry

    @property
    def client_id(self) -> str:
        return self.client.client_id

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.client.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str:
        return " ".join(self.client.allowed_scope((scope or "").split()))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return self.client.allows_redirect_uri(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self._registry.check_secret(self.client, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.client.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.client.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return self.client.allows_grant(grant_type)


class PrivateKeyJWT:
    """authlib client-auth method `private_key_jwt` (registered on the server)."""

    def __init__(
        self,
        assertions: AssertionLedger,
        *,
        clock: Clock,
        audiences: Callable[[], list[str]],
    ) -> None:
        self._assertions = assertions
        self._clock = clock
        self._audiences = audiences

    def __call__(self, query_client: Callable[[str], AuthlibClient | None], request: Any) -> Any:
        form = request.form
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return None
        try:
            header, claims, signing_input, signature = jws.parse(form["client_assertion"])
        except jws.MalformedJWS:
            raise InvalidClientError(
                status_code=401, description="client_assertion is not a JWT"
            ) from None
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise InvalidClientError(
                status_code=401, description="assertion iss and sub must be the client_id"
            )
        named = form.get("client_id")
        if named and named != client_id:
            raise InvalidClientError(
                status_code=401, description="client_id does not match the assertion"
            )
        wrapper = query_client(client_id)
        if wrapper is None or wrapper.client.token_endpoint_auth_method != "private_key_jwt":  # noqa: S105
            raise InvalidClientError(status_code=401, description="client authentication failed")
        self._check_signature(wrapper.client, header, signing_input, signature)
        self._check_claims(client_id, claims)
        return wrapper

    def _check_signature(
        self, client: Client, header: dict[str, Any], signing_input: bytes, signature: bytes
    ) -> None:
        alg = header.get("alg")
        if alg not in jws.ALGORITHMS:
            raise InvalidClientError(
                status_code=401, description="assertion algorithm is not accepted"
            )
        kid = header.get("kid")
        candidates = []
        for data in (client.jwks or {}).get("keys", []):
            if kid is not None and data.get("kid") != kid:
                continue
            try:
                key = jwk.import_key(data)
            except (JoseError, ValueError, TypeError):
                continue
            candidates.append(key.public_key)
        if not any(jws.check_signature(alg, k, signing_input, signature) for k in candidates):
            raise InvalidClientError(
                status_code=401, description="assertion signature does not verify"
            )

    def _check_claims(self, client_id: str, claims: dict[str, Any]) -> None:
        now = self._clock.now()
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not set(self._audiences()) & {a for a in audiences if isinstance(a, str)}:
            raise InvalidClientError(
                status_code=401, description="assertion aud must be the token endpoint or issuer"
            )
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp + LEEWAY <= now:
            raise InvalidClientError(status_code=401, description="assertion has expired")
        if exp - now > MAX_ASSERTION_LIFETIME:
            raise InvalidClientError(status_code=401, description="assertion lives too long")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            raise InvalidClientError(status_code=401, description="assertion is not valid yet")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidClientError(status_code=401, description="assertion has no jti")
        if not self._assertions.use_assertion(client_id, jti, expires_at=float(exp) + LEEWAY):
            raise InvalidClientError(status_code=401, description="assertion was used before")
