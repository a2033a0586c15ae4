"""Upstream identity providers: the port a sign-in through another provider goes through."""
from __future__ import annotations
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from idhub.core.identity import User

@dataclass(frozen=True)
class UpstreamIdentity:
    provider: str
    subject: str
    claims: Mapping[str, str]
    amr: tuple[str, ...]

class UpstreamFailed(Exception):
    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code

class UpstreamProvider(Protocol):
    name: str
    kind: str
    label: str
    def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str) -> str: ...
    def complete(self, *, redirect_uri: str, params: Mapping[str, str], nonce: str, code_verifier: str) -> UpstreamIdentity: ...

class UpstreamAccounts(Protocol):
    def find(self, identity: UpstreamIdentity) -> User | None: ...
