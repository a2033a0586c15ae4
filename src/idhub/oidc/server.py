"""The provider facade: authlib's `AuthorizationServer` used framework-free.

The web layer turns a Starlette request into an `OAuthRequestData` and sends back whatever
`OAuthResponseData` comes out; nothing here knows about HTTP frameworks. `/authorize` is split
in two for the login/consent pages: `validate_authorization` (before anyone signs in) and
`authorize` (after), plus `error_redirect` for answers such as `login_required`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from authlib.common.security import is_secure_transport
from authlib.common.urls import add_params_to_uri
from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import (
    InvalidRequestError,
    OAuth2Error,
    UnsupportedGrantTypeError,
)

from idhub.core.audit import Actor, Auditor, EventType, PendingEvent, RequestContext
from idhub.core.client_guard import ClientAuthGuard, ThrottleBatch
from idhub.core.clients import Client, ClientRegistry
from idhub.core.clock import Clock
from idhub.core.crypto import new_token, sha256_hex
from idhub.core.failure_audit import FailureAudit
from idhub.core.identity import User
from idhub.core.request_budget import TOKEN_FAILED
from idhub.core.token_storage import CodeRecord, TokenStorage
from idhub.errors import AuditError, ConfigError, StorageError
from idhub.oidc import grant_batch
from idhub.oidc.authlib_server import AuthlibServer, IdhubRequest
from idhub.oidc.client_auth import AuthlibClient, PrivateKeyJWT, credential_problem
from idhub.oidc.client_credentials import LeanClientCredentials, LeanOutcome
from idhub.oidc.exchange import TokenExchangeGrant
from idhub.oidc.grants import CodeGrant, RotatingRefreshGrant, S256Only, ServiceGrant
from idhub.oidc.messages import (
    AuthorizationErrorRedirect,
    AuthorizationPageError,
    AuthorizationRequest,
    OAuthRequestData,
    OAuthResponseData,
)
from idhub.oidc.minter import TokenMinter
from idhub.oidc.outage_answers import bad_credentials, database_down, error_answer, unavailable
from idhub.oidc.tokens import AccessTokens

PROMPTS = frozenset({"none", "login", "consent", "select_account"})


class _Refused(Exception):
    """An authorization request refused after its redirect URI was trusted (sent back there)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def _max_age(value: str | None) -> int | None:
    if not value:
        return None
    try:
        max_age = int(value)
    except ValueError:
        raise _Refused("invalid_request", "max_age must be a whole number") from None
    if max_age < 0:
        raise _Refused("invalid_request", "max_age must not be negative")
    return max_age


# RFC 6749 A.3 and A.10: what a response_type and a grant_type may be spelled with. authlib
# echoes both into error descriptions, which may hold only printable ASCII without `"` or `\`.
_RESPONSE_TYPE = re.compile(r"^[A-Za-z0-9_]+( [A-Za-z0-9_]+)*$")
_GRANT_TYPE = re.compile(r"^[A-Za-z0-9._:/?#\[\]@!$&'()*+,;=%~-]+$")


def _repeated(data: OAuthRequestData) -> str | None:
    """The first parameter given more than once (RFC 6749 3.1, 3.2), or None."""
    for name, values in data.multi.items():
        if len(values) > 1:
            return name[:50]
    return None


def _require_supported_request(params: Mapping[str, str]) -> None:
    """OIDC Core 6: request objects are not supported; the client hears so at its redirect
    URI (3.1.2.6), like any other error once the client and the URI are known."""
    if "request" in params:
        raise _Refused("request_not_supported", "request objects are not supported")
    if "request_uri" in params:
        raise _Refused("request_uri_not_supported", "request_uri is not supported")


def _require_well_formed(data: OAuthRequestData) -> None:
    """A token-side request gives each parameter once and one way of authenticating."""
    repeated = _repeated(data)
    if repeated is not None:
        raise InvalidRequestError(f"'{_printable(repeated)}' is repeated")
    grant_type = data.params.get("grant_type")
    if grant_type and not _GRANT_TYPE.match(grant_type):
        raise UnsupportedGrantTypeError("this grant_type is not supported")
    problem = credential_problem(data.headers, data.params)
    if problem is not None:
        raise problem


def _printable(name: str) -> str:
    """A parameter name fit for an error description (RFC 6749 5.2)."""
    return "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "?" for c in name)


class Provider:
    """`services.oidc`."""

    def __init__(
        self,
        *,
        issuer_url: str,
        registry: ClientRegistry,
        minter: TokenMinter,
        tokens: TokenStorage,
        access_tokens: AccessTokens,
        audit: Auditor,
        clock: Clock,
        code_ttl: int,
        assertion_auth: PrivateKeyJWT,
        userinfo: Callable[[str], OAuthResponseData],
        introspect: Callable[[OAuthRequestData, AuthlibClient], OAuthResponseData],
        revoke: Callable[[OAuthRequestData, AuthlibClient], OAuthResponseData],
        client_guard: ClientAuthGuard | None = None,
        failures: FailureAudit | None = None,
    ) -> None:
        if not is_secure_transport(issuer_url):
            raise ConfigError(
                f"the issuer {issuer_url} is plain http on a non-loopback host",
                hint="OAuth 2.0 needs https; plain http is for 127.0.0.1/localhost only",
            )
        self.issuer_url = issuer_url
        self.registry = registry
        self.code_ttl = code_ttl
        self._tokens = tokens
        self._audit = audit
        self._minter = minter
        self._clock = clock
        self._userinfo = userinfo
        self._introspect = introspect
        self._revoke = revoke
        self._failures = failures
        server = AuthlibServer(
            registry,
            minter=minter,
            tokens=tokens,
            access_tokens=access_tokens,
            clock=clock,
            client_guard=client_guard,
        )
        server.register_grant(CodeGrant, [S256Only(required=True)])
        server.register_grant(RotatingRefreshGrant)
        server.register_grant(ServiceGrant)
        server.register_grant(TokenExchangeGrant)
        server.register_client_auth_method("private_key_jwt", assertion_auth)
        self.server = server
        # The common client-credentials request skips authlib's generic machinery with the
        # same answers (oidc/client_credentials.py); None sends every request the generic way.
        self.lean_client_credentials: LeanClientCredentials | None = LeanClientCredentials(
            registry=registry, minter=minter, guard=client_guard
        )

    # ------------------------------------------------------------------ /authorize

    def validate_authorization(self, data: OAuthRequestData) -> AuthorizationRequest:
        """Checks an authorization request before the user is asked anything.

        Raises `AuthorizationPageError` when the client or redirect URI cannot be trusted
        (show a page, never redirect) and `AuthorizationErrorRedirect` for every other
        protocol error (send its 302).
        """
        client, redirect_uri = self._require_trusted_target(data)
        # A repeated state is refused below; the error still echoes the first one.
        state = data.params.get("state")
        try:
            _require_supported_request(data.params)
            return self._checked_request(data, client, redirect_uri)
        except _Refused as refused:
            response = self._redirect(
                redirect_uri, state, error=refused.error, error_description=refused.description
            )
            raise AuthorizationErrorRedirect(response, refused.error, refused.description) from None

    def _require_trusted_target(self, data: OAuthRequestData) -> tuple[Client, str]:
        """The client and redirect URI an error may be sent back to; a page error otherwise."""
        params = data.params
        for name in ("client_id", "redirect_uri"):
            if len(data.multi.get(name, ())) > 1:
                # Which of them would an error go back to? Neither can be trusted.
                raise AuthorizationPageError("invalid_request", f"'{name}' is repeated")
        client_id = params.get("client_id")
        client = self.registry.get(client_id) if client_id else None
        if client is None:
            raise AuthorizationPageError("invalid_client", "the application is not registered")
        redirect_uri = params.get("redirect_uri") or ""
        if not client.allows_redirect_uri(redirect_uri):
            raise AuthorizationPageError(
                "invalid_request", "the redirect URI is not registered for this application"
            )
        return client, redirect_uri

    def _checked_request(
        self, data: OAuthRequestData, client: Client, redirect_uri: str
    ) -> AuthorizationRequest:
        params = data.params
        scopes = self._granted_scopes(data)
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method")
        if challenge and method != "S256":
            raise _Refused("invalid_request", "code_challenge_method must be S256")
        if client.public and not challenge:
            raise _Refused("invalid_request", "public clients must use PKCE (S256)")
        prompt = frozenset((params.get("prompt") or "").split())
        if not prompt <= PROMPTS or ("none" in prompt and len(prompt) > 1):
            raise _Refused("invalid_request", "prompt is not valid")
        max_age = _max_age(params.get("max_age"))
        resource = params.get("resource") or None
        audience = client.resolve_audience(resource)
        if audience is None:
            raise _Refused("invalid_target", "this client may not obtain tokens for that resource")
        if params.get("response_mode") not in (None, "", "query"):
            raise _Refused("invalid_request", "only response_mode=query is supported")
        return AuthorizationRequest(
            client=client,
            redirect_uri=redirect_uri,
            response_type="code",
            scopes=scopes,
            state=params.get("state"),
            nonce=params.get("nonce") or None,
            prompt=prompt,
            max_age=max_age,
            login_hint=params.get("login_hint") or None,
            code_challenge=challenge or None,
            code_challenge_method=method if challenge else None,
            resource=resource,
            audience=audience,
            ui_locales=params.get("ui_locales") or None,
        )

    def _granted_scopes(self, data: OAuthRequestData) -> tuple[str, ...]:
        """authlib's checks of the request; the scopes left after narrowing to the client."""
        # RFC 6749 3.1: no parameter may be given twice, whichever one it is.
        repeated = _repeated(data)
        if repeated is not None:
            raise _Refused("invalid_request", f"'{_printable(repeated)}' is repeated")
        response_type = data.params.get("response_type")
        if response_type and not _RESPONSE_TYPE.match(response_type):
            raise _Refused(
                "unsupported_response_type", "response_type is not one this server knows"
            )
        request = IdhubRequest(data)
        try:
            grant = self.server.get_authorization_grant(request)
            grant.validate_consent_request()
        except OAuth2Error as exc:
            raise _Refused(
                exc.error or "invalid_request", exc.description or exc.error or ""
            ) from None
        except ValueError:
            # authlib refusing to put our input into an error description.
            raise _Refused("invalid_request", "the request is not valid") from None
        scopes = tuple(str(request.scope or "").split())
        if not scopes:
            raise _Refused(
                "invalid_scope", "none of the requested scopes is allowed for this client"
            )
        return scopes

    def authorize(
        self,
        req: AuthorizationRequest,
        *,
        user: User,
        sid: str | None,
        auth_time: float,
        amr: list[str],
        acr: str | None = None,
    ) -> OAuthResponseData:
        """Issues the code for a signed-in (and consenting) user: 302 with code, state, iss."""
        code = new_token(32)
        now = self._clock.now()
        self._tokens.save_code(
            CodeRecord(
                code_hash=sha256_hex(code),
                client_id=req.client.client_id,
                user_id=user.id,
                redirect_uri=req.redirect_uri,
                scope=req.scope,
                nonce=req.nonce,
                code_challenge=req.code_challenge,
                code_challenge_method=req.code_challenge_method,
                resource=req.resource,
                sid=sid,
                auth_time=auth_time,
                acr=acr,
                amr=list(amr),
                created_at=now,
                expires_at=now + self.code_ttl,
            )
        )
        return self._redirect(req.redirect_uri, req.state, code=code)

    def error_redirect(
        self, req: AuthorizationRequest, error: str, description: str | None = None
    ) -> OAuthResponseData:
        """e.g. `login_required`, `consent_required`, `access_denied`."""
        extra = {"error_description": description} if description else {}
        return self._redirect(req.redirect_uri, req.state, error=error, **extra)

    def _redirect(self, redirect_uri: str, state: str | None, **params: str) -> OAuthResponseData:
        pairs = list(params.items())
        if state:
            pairs.append(("state", state))
        # RFC 9207: name the issuer so the client can detect mix-up attacks.
        pairs.append(("iss", self.issuer_url))
        location = add_params_to_uri(redirect_uri, pairs)
        return OAuthResponseData(302, [("Location", location), ("Cache-Control", "no-store")])

    # ------------------------------------------------------------------ token endpoint

    def token(self, data: OAuthRequestData) -> OAuthResponseData:
        return self.token_many([data])[0]

    def token_many(self, batch: Sequence[OAuthRequestData]) -> list[OAuthResponseData]:
        """Token requests that arrived together (web/oauth.py hands over what queued while
        the last batch ran), one answer each, in order. Each is decided on its own exactly as
        alone; what the lean client-credentials requests among them share is the append of
        their `token.issued` events, committed before any of their tokens leaves (when it
        fails, none does). Every other request goes through authlib on its own."""
        answers: dict[int, OAuthResponseData] = {}
        signed: list[tuple[int, dict[str, Any], PendingEvent]] = []
        generic: list[tuple[int, OAuthRequestData]] = []
        lean = self.lean_client_credentials
        # The lean requests' throttle reads, shared while no attempt among them changes a
        # counter (core/client_guard.py `ThrottleBatch`): one read per client and address.
        throttle_reads = ThrottleBatch()
        for i, data in enumerate(batch):
            try:
                planned = lean.plan(data) if lean is not None else None
            except StorageError as exc:
                answers[i] = database_down(exc)
                continue
            if lean is None or planned is None:
                generic.append((i, data))
                continue
            outcome = LeanOutcome()
            try:
                body, event = lean.sign(planned, outcome, batch=throttle_reads)
            except OAuth2Error as exc:
                answers[i] = self._failed(
                    error_answer(exc),
                    client_id=outcome.client_id,
                    # Only client_secret_basic takes the lean path: authenticated is proven.
                    proven=outcome.client_id is not None,
                    params=data.params,
                    reason=None,
                    ctx=data.ctx,
                )
            except AuditError:
                answers[i] = unavailable()
            except StorageError as exc:
                answers[i] = database_down(exc)
            else:
                signed.append((i, body, event))
        if generic:
            answers.update(self._generic_tokens(generic))
        if signed:
            answers.update(self._commit_issued(signed))
        return [answers[i] for i in range(len(batch))]

    def _generic_tokens(
        self, items: list[tuple[int, OAuthRequestData]]
    ) -> dict[int, OAuthResponseData]:
        """The batch's requests that go through authlib. With more than one, the code
        exchanges and refreshes among them share one unit of work for their write sections
        (oidc/grant_batch.py); everything else about each is decided on its own."""
        if len(items) == 1:
            return {items[0][0]: self._generic_token(items[0][1])}
        answers: dict[int, OAuthResponseData] = {}
        deferred: list[tuple[int, IdhubRequest]] = []
        with grant_batch.collecting():
            for i, data in items:
                request = IdhubRequest(data)
                answers[i] = self._generic_token(data, request)
                if request.idhub_deferred is not None:
                    deferred.append((i, request))
        if not deferred:
            return answers
        try:
            results = grant_batch.run_sections(
                self._minter, [r.idhub_deferred for _, r in deferred if r.idhub_deferred]
            )
        except OAuth2Error as exc:  # TemporarilyUnavailable: no token leaves
            refused = error_answer(exc)
            return {**answers, **{i: refused for i, _ in deferred}}
        except AuditError:
            return {**answers, **{i: unavailable() for i, _ in deferred}}
        except StorageError as exc:
            down = database_down(exc)
            return {**answers, **{i: down for i, _ in deferred}}
        for (i, request), result in zip(deferred, results, strict=True):
            response = (
                error_answer(result)
                if isinstance(result, OAuth2Error)
                else self.server.handle_response(200, result, default_json_headers)
            )
            answers[i] = self._concluded(request, response)
        return answers

    def _commit_issued(
        self, signed: list[tuple[int, dict[str, Any], PendingEvent]]
    ) -> dict[int, OAuthResponseData]:
        try:
            self._minter.record_issuances([event for _, _, event in signed])
        except OAuth2Error as exc:  # TemporarilyUnavailable: no token leaves
            refused = error_answer(exc)
            return {i: refused for i, _, _ in signed}
        except StorageError as exc:
            down = database_down(exc)
            return {i: down for i, _, _ in signed}
        return {i: LeanClientCredentials.answer(body) for i, body, _ in signed}

    def _failed(self, response: OAuthResponseData, **failure: Any) -> OAuthResponseData:
        """`response`, once its failure is recorded (a 503 when that cannot be written)."""
        if response.status >= 400 and isinstance(response.body, dict):
            try:
                self._record_failure(response, **failure)
            except AuditError:
                return unavailable()
        return response

    def _generic_token(
        self, data: OAuthRequestData, request: IdhubRequest | None = None
    ) -> OAuthResponseData:
        """One request through authlib; a grant that left its write section to a batch
        (`request.idhub_deferred`) gets a placeholder, concluded by `_generic_tokens`."""
        if request is None:
            request = IdhubRequest(data)
        try:
            _require_well_formed(data)
            response: OAuthResponseData = self.server.create_token_response(request)
        except OAuth2Error as exc:
            response = error_answer(exc)
        except AuditError:
            response = unavailable()
        except UnicodeDecodeError:
            response = bad_credentials()
        except StorageError as exc:
            request.idhub_deferred = None
            return database_down(exc)
        if request.idhub_deferred is not None and response.status == 200:
            return response
        request.idhub_deferred = None
        return self._concluded(request, response)

    def _concluded(self, request: IdhubRequest, response: OAuthResponseData) -> OAuthResponseData:
        """`response` to `request`, once a refusal is recorded."""
        return self._failed(
            response,
            client_id=request.client.client_id if request.client is not None else None,
            proven=request.client is not None and getattr(request, "auth_method", None) != "none",
            params=request.form,
            reason=request.idhub_reason,
            ctx=request.idhub_ctx,
        )

    def _record_failure(
        self,
        response: OAuthResponseData,
        *,
        client_id: str | None,
        proven: bool,
        params: Mapping[str, Any],
        reason: str | None,
        ctx: RequestContext | None,
    ) -> None:
        body = response.body if isinstance(response.body, dict) else {}
        if body.get("error") == "temporarily_unavailable":
            return
        details: dict[str, Any] = {
            "grant_type": str(params.get("grant_type", ""))[:100],
            "error": body.get("error"),
            "description": str(body.get("error_description", ""))[:200],
        }
        if reason:
            details["reason"] = reason
        claimed = client_id or str(params.get("client_id") or "")[:100] or None
        event = PendingEvent(
            EventType.TOKEN_REQUEST_FAILED,
            actor=Actor("client", claimed),
            outcome="failure",
            details=details,
            ctx=ctx,
        )
        self._record_failure_event(proven, event)

    def _record_failure_event(self, proven: bool, event: PendingEvent) -> None:
        """A client that proved who it is gets every failure recorded; one that did not (no
        client, or a public one, which anyone may name) is within the per-address budget of
        failure events (core/failure_audit.py). The answer is the same either way."""
        if proven or self._failures is None:
            self._audit.record_many([event])
        else:
            self._failures.record(TOKEN_FAILED, event)

    # ------------------------------------------------------------------ other endpoints

    def _client_auth(self, data: OAuthRequestData, endpoint: str) -> tuple[IdhubRequest, Any]:
        request = IdhubRequest(data)
        client = self.server.authenticate_client(
            request, ["client_secret_basic", "client_secret_post", "private_key_jwt"], endpoint
        )
        return request, client

    def introspect(self, data: OAuthRequestData) -> OAuthResponseData:
        return self._authenticated(data, "introspection", self._introspect)

    def revoke(self, data: OAuthRequestData) -> OAuthResponseData:
        return self._authenticated(data, "revocation", self._revoke)

    def _authenticated(
        self,
        data: OAuthRequestData,
        endpoint: str,
        handler: Callable[[OAuthRequestData, AuthlibClient], OAuthResponseData],
    ) -> OAuthResponseData:
        try:
            _require_well_formed(data)
            _, client = self._client_auth(data, endpoint)
            return handler(data, client)
        except OAuth2Error as exc:
            return error_answer(exc)
        except AuditError:
            return unavailable()
        except UnicodeDecodeError:
            return bad_credentials()
        except StorageError as exc:
            return database_down(exc, endpoint)

    def userinfo(self, bearer_token: str) -> OAuthResponseData:
        return self._userinfo(bearer_token)
