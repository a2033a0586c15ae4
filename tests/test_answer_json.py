"""oidc/answer_json.py: the provider's JSON answers are the bytes json.dumps makes of them,
whether a string is copied as it is (a compact token) or goes through json's encoder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from idhub.oidc.answer_json import answer_json
from idhub.oidc.messages import OAuthResponseData

TOKEN = (
    "eyJ0eXAiOiJhdCtqd3QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImVzLTEifQ."
    "eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjE4NDAwIiwic3ViIjoiYmVuY2gtZXMifQ."
    "Zm9vYmFyLWJhel9xdXV4"
)


def dumped(body: dict[Any, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


BODIES: list[dict[Any, Any]] = [
    {},
    {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600, "scope": "authz"},
    {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "openid profile",
        "refresh_token": "q7Yx-3_" * 7,
        "id_token": TOKEN,
    },
    {"error": "invalid_client", "error_description": "client authentication failed"},
    # Long strings that look compact but are not: each must be escaped as json escapes it.
    {"access_token": TOKEN + '"'},
    {"access_token": TOKEN + "\\"},
    {"access_token": TOKEN + "\n"},
    {"access_token": TOKEN + "\x00"},
    {"access_token": TOKEN + "\x1f"},
    {"access_token": TOKEN + "\x7f"},
    {"access_token": TOKEN + " "},
    {"access_token": TOKEN + "+/="},
    {"access_token": TOKEN + "é"},
    {"access_token": TOKEN + "\u2028"},
    {"access_token": TOKEN + "\U0001f511"},
    {"access_token": "A" * 47, "b": "-" * 48, "c": "." * 200},
    # Keys are escaped too, and every value kind the fast path writes itself.
    {'k"ey': 1, "é": -2, "\n": 0, "t": True, "f": False, "n": None, "big": 2**70},
    # What goes to json whole: other value kinds, nesting, non-str keys, subclasses.
    {"active": True, "exp": 1.5, "aud": ["a", "b"], "cnf": {"jkt": TOKEN}},
    {"nan": float("nan"), "inf": float("inf")},
    {1: "one", "two": 2},
    {None: TOKEN},
]


@pytest.mark.parametrize("body", BODIES)
def test_the_bytes_are_json_dumps(body: dict[Any, Any]) -> None:
    assert answer_json(body) == dumped(body)


def test_subclasses_of_str_and_int_are_encoded_as_json_encodes_them() -> None:
    class Text(str):
        pass

    class Number(int):
        def __repr__(self) -> str:
            return "not json"

    body = {"access_token": Text(TOKEN), "expires_in": Number(5), "scope": Text("a")}
    assert answer_json(body) == dumped(body)


def test_a_lone_surrogate_fails_as_before() -> None:
    body = {"access_token": TOKEN + "\ud800"}
    with pytest.raises(UnicodeEncodeError):
        dumped(body)
    with pytest.raises(UnicodeEncodeError):
        answer_json(body)


def test_a_compact_token_is_copied_between_quotes() -> None:
    body = {"access_token": TOKEN, "expires_in": 60}
    assert answer_json(body) == f'{{"access_token":"{TOKEN}","expires_in":60}}'.encode()


def test_the_response_shape_uses_it() -> None:
    body = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 60, "scope": "authz"}
    assert OAuthResponseData(200, [], body).json_bytes() == dumped(body)
    assert json.loads(OAuthResponseData(200, [], body).json_bytes()) == body
