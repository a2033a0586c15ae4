"""Whom a question to the decision API is about: a username, a `Subject` (the `sub` idhub
issued) or the validated claims of an idhub token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Subject(str):
    """A user named by the subject idhub issued (`sub` of an ID or access token), not by
    username: `pdp.check(Subject(claims["sub"]), ...)`. A plain `str` is a username."""

    __slots__ = ()


# Whom a question is about: a username, a `Subject`, or validated token claims (their `sub`).
User = str | Subject | Mapping[str, Any]


def who(user: User) -> dict[str, str]:
    """The request field naming `user`: `{"user": name}` or `{"sub": sub}`."""
    if isinstance(user, Subject):
        return {"sub": str(user)}
    if isinstance(user, str):
        return {"user": user}
    if isinstance(user, Mapping):
        sub = user.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ValueError("these claims carry no `sub`: pass validated idhub token claims")
        if sub == user.get("client_id"):
            # A client-credentials token: the system itself, no person behind it.
            raise ValueError(f"this token was issued to system {sub!r}, not to a user")
        return {"sub": sub}
    raise TypeError(f"a user is a username, a Subject or token claims, not {type(user).__name__}")
