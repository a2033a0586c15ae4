"""The framework-free request/response shapes the web layer converts to and from, and the
validated authorization request the login/consent pages work with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from idhub.core.audit import RequestContext
from idhub.core.clients import Client
from idhub.oidc.answer_json import answer_json
from idhub.oidc.client_auth import basic_credentials


class Headers(Mapping[str, str]):
    """Case-insensitive read-only headers (authlib asks for `Authorization`)."""

    def __init__(self, items: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._data = {k.lower(): v for k, v in pairs}

    def __getitem__(self, key: str) -> str:
        return self._data[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._data

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def encode_json(body: dict[str, Any]) -> bytes:
    """The bytes `OAuthResponseData.json_bytes` sends for `body`."""
    return answer_json(body)


# The two shapes below are made once or twice per request. A frozen dataclass's own
# `__init__` sets each field through `object.__setattr__` (its `__setattr__` refuses); theirs
# write the fields into the new object's `__dict__` instead, the same values with the same
# defaults, for a fraction of the cost. Everything else is the dataclass's: equality, repr,
# and the refusal of any assignment or deletion afterwards (`FrozenInstanceError`).


@dataclass(frozen=True, init=False)
class OAuthRequestData:
    """An HTTP request as the provider sees it.

    `uri` should be built from the configured issuer (not the Host header) so redirects and
    audience checks never trust what the client claims the server is called. `params` holds
    the first value of each query (GET) or form (POST) parameter; `multi` every value, so
    repeated parameters can be refused as RFC 6749 section 3.1 asks.
    """

    method: str
    uri: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    multi: Mapping[str, list[str]] = field(default_factory=dict)
    ctx: RequestContext | None = None

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        multi: Mapping[str, list[str]] | None = None,
        ctx: RequestContext | None = None,
    ) -> None:
        fields = self.__dict__
        fields["method"] = method
        fields["uri"] = uri
        fields["headers"] = {} if headers is None else headers
        fields["params"] = {} if params is None else params
        fields["multi"] = {} if multi is None else multi
        fields["ctx"] = ctx

    @cached_property
    def basic_credentials(self) -> tuple[str, str] | None:
        """(client id, secret) in the `authorization` header, as `client_auth.basic_credentials`
        reads them (the scheme is the caller's to check); None without a usable one.

        Decoded once per request: the lean paths' recognition, the throttle's claimed client
        id and the web layer's access record all ask, and each decode was a base64 pass, a
        UTF-8 decode and two unquotes. Kept on the request object only, never in a cache that
        outlives it, since it holds the secret."""
        header = self.headers.get("authorization")
        return None if header is None else basic_credentials(header)


@dataclass(frozen=True, init=False)
class OAuthResponseData:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A dict is sent as JSON; a str as-is (empty for redirects).
    body: dict[str, Any] | str = ""
    # `body`'s JSON as `json_bytes` would encode it, when the maker has it already (an
    # answer it encoded before: oidc/introspection.py). Not part of the answer's identity.
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: dict[str, Any] | str = "",
        encoded: bytes | None = None,
    ) -> None:
        fields = self.__dict__
        fields["status"] = status
        fields["headers"] = [] if headers is None else headers
        fields["body"] = body
        fields["encoded"] = encoded

    @property
    def location(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == "location":
                return value
        return None

    def json_bytes(self) -> bytes:
        if self.encoded is not None:
            return self.encoded
        if isinstance(self.body, dict):
            return encode_json(self.body)
        return self.body.encode()


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated `/authorize` request: the client and redirect URI are known to be right."""

    client: Client
    redirect_uri: str
    response_type: str
    scopes: tuple[str, ...]
    state: str | None = None
    nonce: str | None = None
    prompt: frozenset[str] = frozenset()
    max_age: int | None = None
    login_hint: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    resource: str | None = None
    audience: str | None = None
    ui_locales: str | None = None
    response_mode: str | None = None

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


class AuthorizationPageError(Exception):
    """The request cannot be answered by redirect (unknown client, unregistered redirect URI,
    ...): the web layer shows an error page and never redirects."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class AuthorizationErrorRedirect(Exception):
    """A protocol error to send back to the (validated) redirect URI; `response` is the 302."""

    def __init__(self, response: OAuthResponseData, error: str, description: str) -> None:
        super().__init__(description)
        self.response = response
        self.error = error
        self.description = description
