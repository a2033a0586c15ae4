"""core/audit.py `plain_details_text`: the one-pass text of details that need no scrubbing is
`canonical_details` of what `scrub_flat` returns, and anything scrubbing would touch (or that
is not flat and plain) is left to the usual way."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from idhub.core.audit import REDACTED, plain_details_text, scrub_flat
from idhub.core.audit_chain import canonical_details

JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


PLAIN: list[dict[str, Any]] = [
    {},
    {
        "grant_type": "client_credentials",
        "client_id": "bench-es",
        "audience": "reimburse",
        "scope": "authz",
        "jti": "qLDibE7tVRJbrhcK6Y5qxQ",
    },
    {"b": 1, "a": -2, "c": 0, "big": 10**30},
    {"t": True, "f": False, "n": None},
    {"z": 'quote " and \\ backslash', "y": "line\nbreak\ttab\x01\x1f\x7f", "x": ""},
    {"é": "ünïcödé ключ", "emoji": "\U0001f511", "sep": "\u2028"},
    {"Z": 1, "a": 2, "_": 3, "A": 4, "0": 5, "": 6},
    {"eye": "eyJ", "begin": "-----BEGIN"},  # a prefix alone is no shape, but goes the usual way
    {"nul": "a\x00b"},
    {"reason": "[redacted]", "path": "/a/b"},
]

NOT_PLAIN: list[dict[Any, Any]] = [
    {"password": "hunter2"},
    {"Client_Secret": "x"},
    {"token": None},
    {"code": ""},
    {"access_token": REDACTED},
    {"note": f"bearer {JWT}"},
    {"key": "-----BEGIN EC PRIVATE KEY-----\nMHc..."},
    {"ratio": 0.5},
    {"nan": float("nan")},
    {"list": ["a"]},
    {"dict": {"a": 1}},
    {"tuple": (1, 2)},
    {"colour": Colour.RED},
    {"name": Name("x")},
    {Name("k"): "v"},
    {1: "one"},
    {1: "one", "two": 2},
    {None: "x"},
    {"when": object()},
]


@pytest.mark.parametrize("details", PLAIN)
def test_plain_details_are_written_as_the_encoder_writes_their_scrubbed_form(
    details: dict[str, Any],
) -> None:
    scrubbed, flat = scrub_flat(details)
    text = plain_details_text(details)
    if text is None:  # a prefix of a secret shape: the usual way, which changes nothing here
        assert "eyJ" in str(details) or "-----BEGIN" in str(details)
        return
    assert (scrubbed, flat) == (details, True)
    assert text == canonical_details(scrubbed)


@pytest.mark.parametrize("details", NOT_PLAIN, ids=repr)
def test_anything_else_goes_the_usual_way(details: dict[Any, Any]) -> None:
    assert plain_details_text(details) is None


def test_a_secret_named_key_is_refused_even_after_a_plain_one_was_remembered() -> None:
    assert plain_details_text({"scope": "a"}) == '{"scope":"a"}'
    assert plain_details_text({"scope": "a"}) == '{"scope":"a"}'
    assert plain_details_text({"scope": "a", "secret": "s"}) is None
    assert plain_details_text({"scope": "a", "Secret": "s"}) is None
