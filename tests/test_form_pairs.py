"""web/oauth.py `form_pairs`: the pairs parse_qsl (keep_blank_values) reads from a form or a
query, with or without its decoding fast path."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from idhub.web.oauth import form_pairs

FORMS = [
    "",
    "&",
    "&&",
    "=",
    "==",
    "a",
    "a=",
    "=b",
    "a=b",
    "a=b=c",
    "a=b&",
    "&a=b",
    "a=b&&c=d",
    "a&b=",
    "grant_type=client_credentials&scope=authz",
    "grant_type=client_credentials&scope=authz&scope=other",
    "grant_type=client_credentials&resource=https://api.example/x?y#z",
    "a=b;c=d",
    "a= b &c=\td",
    "é=ü&ключ=значение",
    # What needs decoding goes to parse_qsl itself.
    "scope=a+b",
    "scope=a%20b",
    "a%3Db=c%26d",
    "x=%ZZ&y=%",
    "x=%C3%A9&y=%FF",
    "+=+",
]


@pytest.mark.parametrize("text", FORMS)
def test_the_pairs_are_parse_qsl_s(text: str) -> None:
    assert form_pairs(text) == parse_qsl(text, keep_blank_values=True)
