"""Signing in through another OpenID Connect provider (a parent company's IdP, Azure AD,
another idhub): an `UpstreamProvider` of kind "oidc" built on authlib's OAuth 2 client.

Discovery is fetched when first needed and kept for `discovery_ttl` seconds; its `issuer` must
be the configured one exactly (OIDC Discovery 4.3), so a provider cannot be swapped by the
document that names it. The code flow always uses PKCE S256 and a nonce; the ID token is
checked in `upstream_id_token`; userinfo, when asked for, must be about the same `sub`.
Every failure is `UpstreamFailed` with a code; codes, tokens and secrets are never logged."""

from __future__ import annotations

import functools
import hmac
import importlib
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import authlib.deprecate  # noqa: F401 - its "always" filter first, so ours below stays in front
import certifi
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from idhub.adapters.upstream_id_token import ProviderKeys, validate_id_token
from idhub.config.settings import Settings, UpstreamOidcSettings
from idhub.core.clock import Clock, SystemClock
from idhub.core.upstream import UpstreamFailed, UpstreamIdentity, UpstreamProvider
from idhub.core.upstream_oidc_mapping import AccountLookup, ClaimAccounts, ClaimMatch

if TYPE_CHECKING:
    # httpx, and authlib's client with httpx2 under it, are imported when a provider first
    # talks to its server: together with httpx's command line (click, rich, Pygments) they are
    # ~14 MB that a worker nobody signs in through need not carry.
    import httpx
    from authlib.integrations.httpx_client import OAuthError

KIND = "oidc"
AMR_FEDERATED = "fed"  # RFC 8176: signed in through a federated provider
_MAX_DOCUMENT = 512 * 1024
_MAX_ERROR_TEXT = 200
# Claims an UpstreamIdentity carries are text; these are the provider's protocol, not the person.
_PROTOCOL_CLAIMS = frozenset({"aud", "exp", "iat", "nbf", "nonce", "at_hash", "c_hash", "azp"})


@functools.cache
def _authlib_client() -> tuple[Callable[..., Any], type[OAuthError]]:
    """authlib's OAuth 2 client and its error, imported on the first code exchange."""
    with warnings.catch_warnings():
        # Without httpx2 installed, authlib's client announces its future move; not ours to fix.
        warnings.filterwarnings("ignore", message="The httpx module is deprecated")
        from authlib.integrations.httpx_client import OAuth2Client
        from authlib.integrations.httpx_client import OAuthError as error
    return OAuth2Client, error


@functools.cache
def _transport_errors() -> tuple[type[Exception], ...]:
    """httpx's errors, and httpx2's when authlib's client runs on that fork."""
    import httpx

    errors: list[type[Exception]] = [httpx.HTTPError]
    try:
        errors.append(importlib.import_module("httpx2").HTTPError)
    except ImportError:
        pass
    return tuple(errors)


@dataclass(frozen=True)
class Discovery:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None


class OidcUpstream:
    """One `[upstream.<name>]` provider of kind "oidc"."""

    kind = KIND

    def __init__(
        self,
        settings: UpstreamOidcSettings,
        *,
        http: httpx.Client | None = None,
        clock: Clock | None = None,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.name = settings.name
        self.label = settings.label or settings.name
        self._settings = settings
        # Made once: loading the CA bundle is most of what a new HTTP client costs (~50 ms on
        # a busy box), and the token request makes one per sign-in.
        self._tls = ssl.create_default_context(cafile=str(settings.ca_file or certifi.where()))
        self._shared_http = http
        self._own_http: httpx.Client | None = None  # made on the first discovery or JWKS fetch
        self._lock = threading.Lock()
        self._clock = clock or SystemClock()
        self._client_factory = client_factory  # None: authlib's OAuth2Client, when first needed
        self._discovery: Discovery | None = None
        self._discovered_at = 0.0
        self._keys = ProviderKeys(self._fetch_jwks, self._clock)

    # ------------------------------------------------------------------ the port

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        # authlib's client builds this same URL; its request parameters, without an HTTP
        # client that a redirect does not need.
        s = self._settings
        return str(
            prepare_grant_uri(
                self.discovery().authorization_endpoint,
                client_id=s.client_id,
                response_type="code",
                redirect_uri=redirect_uri,
                scope=" ".join(s.scopes),
                state=state,
                nonce=nonce,
                code_challenge=create_s256_code_challenge(code_verifier),
                code_challenge_method="S256",
            )
        )

    def complete(
        self, *, redirect_uri: str, params: Mapping[str, str], nonce: str, code_verifier: str
    ) -> UpstreamIdentity:
        self._check_callback(params)
        found = self.discovery()
        with self._client(redirect_uri) as client:
            token = self._exchange(client, found, params["code"], code_verifier)
            claims = validate_id_token(
                token.get("id_token", ""),
                keys=self._keys,
                issuer=self._settings.issuer,
                client_id=self._settings.client_id,
                nonce=nonce,
                algorithms=self._settings.allowed_algs,
                now=self._clock.now(),
                skew=self._settings.clock_skew,
            )
            if self._settings.userinfo:
                claims = {**self._userinfo(client, found, str(claims["sub"])), **claims}
        return self._identity(claims)

    # ------------------------------------------------------------------ discovery and keys

    def discovery(self) -> Discovery:
        now = time.monotonic()
        if self._discovery is None or now - self._discovered_at > self._settings.discovery_ttl:
            self._discovery = self._discover()
            self._discovered_at = now
        return self._discovery

    def _discover(self) -> Discovery:
        issuer = self._settings.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._get_json(url, "discovery document")
        if document.get("issuer") != issuer:
            raise UpstreamFailed(
                f"{self.name}: the discovery document names issuer {document.get('issuer')!r}, "
                f"not the configured {issuer!r} (they must be identical)",
                code="discovery_issuer",
            )
        # An https provider's secret and codes must not be sent to a plain-http endpoint.
        schemes = ("https://",) if issuer.startswith("https://") else ("https://", "http://")
        endpoints = {}
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri", "userinfo_endpoint"):
            value = document.get(key)
            if value is None and key == "userinfo_endpoint":
                continue
            if not isinstance(value, str) or not value.startswith(schemes):
                raise UpstreamFailed(
                    f"{self.name}: the discovery document has no usable {key}"
                    + (" (it must be https, like the issuer)" if isinstance(value, str) else ""),
                    code="discovery_invalid",
                )
            endpoints[key] = value
        methods = document.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise UpstreamFailed(
                f"{self.name}: the provider does not support PKCE S256", code="discovery_invalid"
            )
        if self._settings.userinfo and "userinfo_endpoint" not in endpoints:
            raise UpstreamFailed(
                f"{self.name}: userinfo = true, but the provider publishes no userinfo_endpoint",
                code="discovery_invalid",
            )
        return Discovery(
            authorization_endpoint=endpoints["authorization_endpoint"],
            token_endpoint=endpoints["token_endpoint"],
            jwks_uri=endpoints["jwks_uri"],
            userinfo_endpoint=endpoints.get("userinfo_endpoint"),
        )

    def _fetch_jwks(self) -> Mapping[str, Any]:
        return self._get_json(self.discovery().jwks_uri, "JWKS")

    def _http(self) -> httpx.Client:
        if self._shared_http is not None:
            return self._shared_http
        import httpx

        with self._lock:
            if self._own_http is None:
                self._own_http = httpx.Client(
                    timeout=self._settings.timeout, follow_redirects=False, verify=self._tls
                )
            return self._own_http

    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        import httpx

        try:
            response = self._http().get(url, headers={"accept": "application/json"})
        except httpx.TimeoutException:
            raise self._down(f"timed out fetching its {what}") from None
        except httpx.HTTPError as exc:
            raise self._down(f"could not fetch its {what} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise self._down(f"answered {response.status_code} for its {what}")
        if len(response.content) > _MAX_DOCUMENT:
            raise UpstreamFailed(f"{self.name}: its {what} is too large", code="discovery_invalid")
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise UpstreamFailed(
                f"{self.name}: its {what} is not a JSON object", code="discovery_invalid"
            )
        return document

    def _down(self, what: str) -> UpstreamFailed:
        return UpstreamFailed(f"{self.name} cannot be reached: {what}", code="upstream_unavailable")

    # ------------------------------------------------------------------ the code flow

    def _client(self, redirect_uri: str) -> Any:
        s = self._settings
        factory = self._client_factory or _authlib_client()[0]
        return factory(
            client_id=s.client_id,
            client_secret=s.client_secret.reveal(),
            token_endpoint_auth_method=s.token_auth_method,
            scope=" ".join(s.scopes),
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            timeout=s.timeout,
            follow_redirects=False,
            verify=self._tls,
        )

    def _check_callback(self, params: Mapping[str, str]) -> None:
        if "error" in params:
            error = _short(params.get("error", ""))
            description = _short(params.get("error_description", ""))
            said = f": {description}" if description else ""
            raise UpstreamFailed(
                f"{self.name} refused the sign-in ({error}{said})", code="code_missing"
            )
        sent = params.get("iss")
        # RFC 9207: a provider that names itself in the response must be the one we asked.
        if sent is not None and not hmac.compare_digest(
            sent.encode(), self._settings.issuer.encode()
        ):
            raise UpstreamFailed(
                f"the response names issuer {_short(sent)!r}, not {self.name}'s",
                code="callback_issuer",
            )
        if not params.get("code"):
            raise UpstreamFailed(f"{self.name} sent no authorization code", code="code_missing")

    def _exchange(
        self, client: Any, found: Discovery, code: str, code_verifier: str
    ) -> dict[str, Any]:
        _, oauth_error = _authlib_client()
        try:
            token = client.fetch_token(
                found.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
            )
        except oauth_error as exc:
            raise UpstreamFailed(
                f"{self.name} refused the authorization code ({_short(str(exc.error))})",
                code="code_refused",
            ) from None
        except _transport_errors() as exc:
            raise self._down(f"token request failed ({type(exc).__name__})") from None
        except ValueError:
            raise UpstreamFailed(
                f"{self.name}'s token response is not JSON", code="token_invalid"
            ) from None
        if not isinstance(token, Mapping) or "id_token" not in token:
            raise UpstreamFailed(f"{self.name} returned no ID token", code="id_token_missing")
        return dict(token)

    def _userinfo(self, client: Any, found: Discovery, sub: str) -> dict[str, Any]:
        assert found.userinfo_endpoint is not None
        try:
            response = client.get(found.userinfo_endpoint, headers={"accept": "application/json"})
        except _transport_errors() as exc:
            raise self._down(f"userinfo request failed ({type(exc).__name__})") from None
        try:
            info = response.json() if response.status_code == 200 else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise UpstreamFailed(
                f"{self.name}'s userinfo answered {response.status_code} without a JSON object",
                code="userinfo_invalid",
            )
        # OIDC Core 5.3.2: a userinfo answer about someone else must not be used.
        if info.get("sub") != sub:
            raise UpstreamFailed(
                f"{self.name}'s userinfo is about another subject", code="userinfo_invalid"
            )
        return info

    def _identity(self, claims: Mapping[str, Any]) -> UpstreamIdentity:
        text: dict[str, str] = {}
        for key, value in claims.items():
            if key in _PROTOCOL_CLAIMS:
                continue
            if isinstance(value, bool):
                text[key] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                text[key] = str(value)
        amr = claims.get("amr")
        upstream_amr = [str(v) for v in amr if isinstance(v, str)] if isinstance(amr, list) else []
        # The upstream's own methods are kept as a note (audit, claims), not taken as idhub's:
        # its second factor is its policy, not ours (docs/upstream.md, "acr and amr").
        text["amr"] = " ".join(upstream_amr)
        return UpstreamIdentity(
            provider=self.name, subject=str(claims["sub"]), claims=text, amr=(AMR_FEDERATED,)
        )

    def close(self) -> None:
        """Closes the HTTP client this provider made for itself (a shared one is the owner's)."""
        with self._lock:
            if self._own_http is not None:
                self._own_http.close()
                self._own_http = None


def _short(value: str) -> str:
    """A provider's own text, cut short and kept to printable characters for messages."""
    printable = "".join(ch for ch in value if ch.isprintable())
    return printable[:_MAX_ERROR_TEXT]


def build_oidc_providers(
    settings: Settings, http: httpx.Client | None = None, *, clock: Clock | None = None
) -> list[UpstreamProvider]:
    """The `[upstream.<name>]` providers of kind "oidc", for bootstrap to hand to the sign-in
    core. `http` (discovery, JWKS) may be shared; None gives each provider its own client."""
    return [
        OidcUpstream(provider, http=http, clock=clock)
        for provider in settings.upstream_oidc.values()
    ]


def build_oidc_accounts(settings: Settings, lookup: AccountLookup) -> ClaimAccounts:
    """The account mapping for those providers (`UpstreamAccounts`): each one's match / claim /
    require_email_verified applied to `lookup` (the identity store's `users_matching`)."""
    rules = {
        name: ClaimMatch(
            match=p.match, claim=p.claim, require_email_verified=p.require_email_verified
        )
        for name, p in settings.upstream_oidc.items()
    }
    return ClaimAccounts(rules, lookup)
