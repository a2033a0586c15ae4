"""The framework-free request/response shapes the web layer converts to and from, and the
validated authorization request the login/consent pages work with."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

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


T = TypeVar("T")


class _ReadOnce(Generic[T]):
    """`functools.cached_property` without its lock: on Python 3.11 every first read takes
    an `RLock` around the computation, which cost more than decoding a Basic header. Two
    threads reading one request at once would each compute the same value (the function is
    pure), and one would be kept; a request is read by one thread at a time anyway. The value
    goes into the instance's `__dict__`, which later reads find before this descriptor."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self._func = func
        self._name = func.__name__
        self.__doc__ = func.__doc__

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _ReadOnce[T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...
    def __get__(self, instance: object, owner: type | None = None) -> T | _ReadOnce[T]:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._func(instance)
        return value


@dataclass(frozen=True)
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

    @_ReadOnce
    def basic_credentials(self) -> tuple[str, str] | None:
        """(client id, secret) in the `authorization` header, as `client_auth.basic_credentials`
        reads them (the scheme is the caller's to check); None without a usable one.

        Decoded once per request: the lean paths' recognition, the throttle's claimed client
        id and the web layer's access record all ask, and each decode was a base64 pass, a
        UTF-8 decode and two unquotes. Kept on the request object only, never in a cache that
        outlives it, since it holds the secret."""
        header = self.headers.get("authorization")
        return None if header is None else basic_credentials(header)


@dataclass(frozen=True)
class OAuthResponseData:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A dict is sent as JSON; a str as-is (empty for redirects).
    body: dict[str, Any] | str = ""

    @property
    def location(self) -> str | None:
        for name, value in self.headers:
            if name.lower() == "location":
                return value
        return None

    def json_bytes(self) -> bytes:
        if isinstance(self.body, dict):
            return answer_json(self.body)
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
