"""Registered OAuth clients (the systems that sign users in or call each other) and the registry
that creates, caches and changes them.

A client's `client_id` is also its audience and its policy domain (contract 2). Secrets are
random values idhub generates, shown once, and stored only as an HMAC (`KeyedHasher`), so the
token endpoint checks them in microseconds and in constant time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from idhub.core.audit import Actor, Auditor, EventType, RequestContext
from idhub.core.crypto import KeyedHasher, new_token
from idhub.core.transactions import UnitOfWork
from idhub.errors import InvalidInput, NotFound, StorageUnavailable

SIGNING_ALGS = ("RS256", "ES256", "EdDSA")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE)
# The audience of idhub's own APIs, and the scopes that are only meaningful for it.
IDHUB_AUDIENCE = "idhub"
IDHUB_API_SCOPES = frozenset({"authz", "authz:admin", "audit:read"})

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str = ""
    public: bool = False
    first_party: bool = False
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    response_types: tuple[str, ...] = ("code",)
    scopes: tuple[str, ...] = ("openid",)
    jwks: Mapping[str, Any] | None = None
    id_token_alg: str = "RS256"  # noqa: S105
    access_token_alg: str = "ES256"  # noqa: S105
    default_audience: str | None = None
    allowed_audiences: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = True
    disabled: bool = False
    # Everyone signing in to this system presents a second factor (docs/login-and-sessions.md).
    require_mfa: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    secret_rotated_at: float | None = None
    # The keyed hash, never the secret; kept out of reprs all the same.
    secret_hash: str | None = field(default=None, repr=False)

    @property
    def audience(self) -> str:
        """The audience of tokens this client gets when it names no resource."""
        return self.default_audience or self.client_id

    def allows_redirect_uri(self, uri: str) -> bool:
        # Exact string equality: no normalisation, no prefix or wildcard matching.
        return uri in self.redirect_uris

    def allows_post_logout_redirect_uri(self, uri: str) -> bool:
        return uri in self.post_logout_redirect_uris

    def allows_grant(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    def allowed_scope(self, requested: Iterable[str]) -> list[str]:
        """The requested scopes this client may have, in request order, without duplicates."""
        allowed = set(self.scopes)
        out: list[str] = []
        for scope in requested:
            if scope in allowed and scope not in out:
                out.append(scope)
        return out

    def resolve_audience(self, resource: str | None) -> str | None:
        """The `aud` for a requested `resource` (RFC 8707), or None if not allowed.

        A resource names a system by its client_id (`reimburse`, `idhub`) or is one of the
        absolute URIs the client lists in `allowed_audiences`; either way it must be the
        client's own audience, listed in `allowed_audiences`, or (for `idhub`) implied by the
        client holding one of idhub's API scopes.
        """
        if resource is None or resource == "":
            return self.audience
        if resource in (self.audience, self.client_id) or resource in self.allowed_audiences:
            return resource
        if resource == IDHUB_AUDIENCE and IDHUB_API_SCOPES & set(self.scopes):
            return resource
        return None

    def describe(self) -> dict[str, Any]:
        """Plain data for `idhub client show --json` (no secret material)."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "public": self.public,
            "first_party": self.first_party,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "redirect_uris": list(self.redirect_uris),
            "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
            "grant_types": list(self.grant_types),
            "scope": " ".join(self.scopes),
            "id_token_signed_response_alg": self.id_token_alg,
            "access_token_signed_response_alg": self.access_token_alg,
            "default_audience": self.audience,
            "allowed_audiences": list(self.allowed_audiences),
            "backchannel_logout_uri": self.backchannel_logout_uri,
            "jwks": dict(self.jwks) if self.jwks else None,
            "disabled": self.disabled,
            "require_mfa": self.require_mfa,
            "created_at": self.created_at,
            "secret_rotated_at": self.secret_rotated_at,
        }


class ClientStore(Protocol):
    def get(self, client_id: str) -> Client | None: ...
    def list(self) -> list[Client]: ...
    def insert(self, client: Client) -> None: ...
    def update(self, client: Client) -> None: ...
    def delete(self, client_id: str) -> bool: ...
    def version(self) -> int:
        """A counter every change bumps, so other processes know their cache is stale."""
        ...


def _check_uri(uri: str, what: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise InvalidInput(f"{what} {uri!r} must be an absolute http(s) URI without a fragment")
    return uri


def _check_scopes(scope: str | Sequence[str]) -> tuple[str, ...]:
    items = scope.split() if isinstance(scope, str) else list(scope)
    for item in items:
        if not _SCOPE_TOKEN.match(item):
            raise InvalidInput(f"scope {item!r} contains characters a scope may not have")
    return tuple(dict.fromkeys(items))


def validate_client(client: Client) -> Client:
    """Refuses registrations that could not work or would be unsafe; returns the client."""
    if not _CLIENT_ID.match(client.client_id):
        raise InvalidInput(
            f"client id {client.client_id!r} must be 1-100 letters, digits, '.', '_', ':' or '-'"
        )
    for uri in client.redirect_uris:
        _check_uri(uri, "redirect URI")
    for uri in client.post_logout_redirect_uris:
        _check_uri(uri, "post-logout redirect URI")
    if client.backchannel_logout_uri:
        _check_uri(client.backchannel_logout_uri, "back-channel logout URI")
    unknown = set(client.grant_types) - set(GRANT_TYPES)
    if unknown:
        raise InvalidInput(
            f"unknown grant type(s) {', '.join(sorted(unknown))}; known: {', '.join(GRANT_TYPES)}"
        )
    if client.token_endpoint_auth_method not in AUTH_METHODS:
        raise InvalidInput(f"token endpoint auth method must be one of {', '.join(AUTH_METHODS)}")
    for alg in (client.id_token_alg, client.access_token_alg):
        if alg not in SIGNING_ALGS:
            raise InvalidInput(
                f"signing algorithm {alg!r} must be one of {', '.join(SIGNING_ALGS)}"
            )
    if client.public:
        if client.token_endpoint_auth_method != "none":  # noqa: S105
            raise InvalidInput("a public client authenticates with method 'none'")
        if {"client_credentials", TOKEN_EXCHANGE} & set(client.grant_types):
            raise InvalidInput("a public client cannot use client_credentials or token exchange")
    elif client.token_endpoint_auth_method == "none":  # noqa: S105
        raise InvalidInput("only public clients may use token endpoint auth method 'none'")
    if client.token_endpoint_auth_method == "private_key_jwt":  # noqa: S105
        keys = (client.jwks or {}).get("keys")
        if not isinstance(keys, list) or not keys:
            raise InvalidInput("private_key_jwt needs the client's public keys (a JWKS with keys)")
    if "authorization_code" in client.grant_types and not client.redirect_uris:
        raise InvalidInput("the authorization_code grant needs at least one redirect URI")
    return client


def _domains(client: Client | None) -> frozenset[str]:
    """The policy domains a client takes part in: none for an unknown or disabled one."""
    if client is None:
        return frozenset()
    return frozenset((client.audience, *client.allowed_audiences))


class ClientRegistry:
    """Creates and changes clients (audited) and serves lookups from a per-process cache.

    The cache is checked against the store's change counter at most every `recheck` seconds,
    so a secret rotated or a client removed in another process stops working within that
    time without a database read on every token request.
    """

    def __init__(
        self,
        store: ClientStore,
        hasher: KeyedHasher,
        audit: Auditor,
        *,
        clock: Any,
        default_access_token_alg: str = "ES256",  # noqa: S107
        recheck: float = 1.0,
        uow: UnitOfWork,
    ) -> None:
        self._uow = uow
        self._store = store
        self._hasher = hasher
        self._audit = audit
        self._clock = clock
        self._default_at_alg = default_access_token_alg
        self._recheck = recheck
        self._lock = threading.Lock()
        self._cache: dict[str, Client | None] = {}
        self._version: int | None = None
        self._checked_at = 0.0

    # ------------------------------------------------------------------ lookups

    def get(self, client_id: str) -> Client | None:
        """The client, or None if unknown or disabled."""
        if not client_id or len(client_id) > 100:
            return None
        self._refresh_if_stale()
        try:
            client = self._cache[client_id]
        except KeyError:
            client = self._store.get(client_id)
            with self._lock:
                if len(self._cache) > 10_000:
                    # Unknown ids sent by strangers must not grow memory without bound.
                    self._cache.clear()
                self._cache[client_id] = client
        if client is None or client.disabled:
            return None
        return client

    def require(self, client_id: str) -> Client:
        client = self._store.get(client_id)
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client

    def list(self) -> list[Client]:
        return self._store.list()

    def check_secret(self, client: Client, secret: str) -> bool:
        # No cache of verified secrets: the stored form is one HMAC-SHA-256 (a few µs),
        # and a cache would have to key on a keyed hash of the presented secret, i.e. the
        # same HMAC, plus a lookup and invalidation on every client change. Nothing to save.
        return self._hasher.check(secret, client.secret_hash)

    def _refresh_if_stale(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._recheck:
            return
        try:
            version = self._store.version()
        except StorageUnavailable:
            if not self._cache:
                raise
            # The database is away: the clients already seen keep being served as they
            # were (the decision API answers on); asked again after `recheck`.
            self._checked_at = now
            return
        with self._lock:
            if version != self._version:
                self._cache.clear()
                self._version = version
            self._checked_at = now

    def enabled(self, client_id: str) -> bool:
        """Whether `client_id` is registered and not disabled (cached, like `get`)."""
        return self.get(client_id) is not None

    def enabled_if_fresh(self, client_id: str) -> bool | None:
        """`enabled` when memory holds the answer and the version check is not due; None
        otherwise (the caller asks `enabled` off the event loop)."""
        fresh, client = self._if_fresh(client_id)
        return client is not None if fresh else None

    def party_domains(self, client_id: str) -> frozenset[str]:
        """The audiences a client is registered for (its default and allowed ones): where a
        system takes part, and so the policy domains it may ask the decision API about."""
        return _domains(self.get(client_id))

    def party_domains_if_fresh(self, client_id: str) -> frozenset[str] | None:
        """`party_domains` when memory holds the answer and the version check is not due
        (the same answer `party_domains` would give now, without its possible database read);
        None otherwise, and the caller asks `party_domains` off the event loop."""
        fresh, client = self._if_fresh(client_id)
        return _domains(client) if fresh else None

    def _if_fresh(self, client_id: str) -> tuple[bool, Client | None]:
        """(True, what `get` would answer now) when memory holds it and the version check is
        not due, without a database read; (False, None) otherwise."""
        if time.monotonic() - self._checked_at >= self._recheck:
            return False, None
        try:
            client = self._cache[client_id]
        except KeyError:
            return False, None
        return True, None if client is None or client.disabled else client

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()
            self._checked_at = 0.0

    # ------------------------------------------------------------------ changes

    def register(
        self,
        client_id: str,
        *,
        name: str = "",
        redirect_uris: Sequence[str] = (),
        post_logout_redirect_uris: Sequence[str] = (),
        grant_types: Sequence[str] = ("authorization_code", "refresh_token"),
        scope: str | Sequence[str] = "openid profile email",
        public: bool = False,
        first_party: bool = False,
        token_endpoint_auth_method: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        id_token_alg: str = "RS256",  # noqa: S107
        access_token_alg: str | None = None,
        default_audience: str | None = None,
        allowed_audiences: Sequence[str] = (),
        backchannel_logout_uri: str | None = None,
        actor: Actor | None = None,
        ctx: RequestContext | None = None,
    ) -> tuple[Client, str | None]:
        """Registers a client; returns it and its secret (None for public/private_key_jwt).

        The secret is returned only here and by `rotate_secret`; idhub keeps only its HMAC.
        """
        method = token_endpoint_auth_method or ("none" if public else "client_secret_basic")
        now = self._clock.now()
        secret = None if method in ("none", "private_key_jwt") else new_token(32)
        client = validate_client(
            Client(
                client_id=client_id,
                name=name or client_id,
                public=public,
                first_party=first_party,
                token_endpoint_auth_method=method,
                redirect_uris=tuple(redirect_uris),
                post_logout_redirect_uris=tuple(post_logout_redirect_uris),
                grant_types=tuple(dict.fromkeys(grant_types)),
                scopes=_check_scopes(scope),
                jwks=dict(jwks) if jwks else None,
                id_token_alg=id_token_alg,
                access_token_alg=access_token_alg or self._default_at_alg,
                default_audience=default_audience,
                allowed_audiences=tuple(dict.fromkeys(allowed_audiences)),
                backchannel_logout_uri=backchannel_logout_uri,
                created_at=now,
                updated_at=now,
                secret_rotated_at=now if secret else None,
                secret_hash=self._hasher.hash(secret) if secret else None,
            )
        )
        with self._uow.atomic() as tx:
            self._store.insert(client)
            tx.record(
                EventType.CLIENT_CREATED,
                actor=actor or Actor("admin"),
                target=client_id,
                details={
                    "auth_method": method,
                    "grant_types": list(client.grant_types),
                    "scope": " ".join(client.scopes),
                    "redirect_uris": list(client.redirect_uris),
                },
                ctx=ctx,
            )
        self.invalidate()
        return client, secret

    def rotate_secret(
        self, client_id: str, *, actor: Actor | None = None, ctx: RequestContext | None = None
    ) -> tuple[Client, str]:
        client = self.require(client_id)
        if client.token_endpoint_auth_method not in ("client_secret_basic", "client_secret_post"):
            raise InvalidInput(
                f"client {client_id!r} authenticates with {client.token_endpoint_auth_method}; "
                "it has no secret to rotate"
            )
        secret = new_token(32)
        now = self._clock.now()
        client = replace(
            client, secret_hash=self._hasher.hash(secret), secret_rotated_at=now, updated_at=now
        )
        with self._uow.atomic() as tx:
            self._store.update(client)
            tx.record(
                EventType.CLIENT_SECRET_ROTATED,
                actor=actor or Actor("admin"),
                target=client_id,
                ctx=ctx,
            )
        self.invalidate()
        return client, secret

    def update(
        self,
        client_id: str,
        *,
        actor: Actor | None = None,
        ctx: RequestContext | None = None,
        **changes: Any,
    ) -> Client:
        """Changes registration fields (not the secret); validated like a new registration."""
        client = self.require(client_id)
        forbidden = {"client_id", "secret_hash", "created_at"} & set(changes)
        if forbidden:
            raise InvalidInput(f"cannot change {', '.join(sorted(forbidden))} this way")
        for key in (
            "redirect_uris",
            "post_logout_redirect_uris",
            "grant_types",
            "allowed_audiences",
        ):
            if key in changes:
                changes[key] = tuple(changes[key])
        if "scope" in changes:
            changes["scopes"] = _check_scopes(changes.pop("scope"))
        try:
            updated = replace(client, **changes, updated_at=self._clock.now())
        except TypeError as exc:
            raise InvalidInput(f"unknown client field: {exc}") from None
        validate_client(updated)
        with self._uow.atomic() as tx:
            self._store.update(updated)
            tx.record(
                EventType.CLIENT_UPDATED,
                actor=actor or Actor("admin"),
                target=client_id,
                details={"changed": sorted(changes)},
                ctx=ctx,
            )
        self.invalidate()
        return updated

    def remove(
        self, client_id: str, *, actor: Actor | None = None, ctx: RequestContext | None = None
    ) -> None:
        with self._uow.atomic() as tx:
            if not self._store.delete(client_id):
                raise NotFound(f"no client {client_id!r}")
            tx.record(
                EventType.CLIENT_REMOVED, actor=actor or Actor("admin"), target=client_id, ctx=ctx
            )
        self.invalidate()
