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
    # Introspection's and revocation's bodies, and more awkward ones.
    "",
    "token=abc.def.ghi",
    "token=abc.def.ghi&token_type_hint=access_token",
    "token_type_hint=access_token&token=abc",
    "token=a&token=b",  # repeated keys, both kept in order
    "token=a&token=b&token=",
    "token=",  # empty value
    "=abc",  # empty name
    "=",
    "token",  # no "="
    "token&hint",
    "token=a=b=c",  # "=" inside the value
    "&&token=a&&",  # empty parts
    "&",
    "token=a;hint=b",  # ";" is no separator
    ";",
    "token=a+b",  # "+" is a space
    "token=a%2Bb",  # an escaped "+"
    "token=a%20b&x=%",  # a lone "%"
    "token=%zz",
    "token=%E5%AE%A2",  # UTF-8 escaped
    "token=%FF",  # escapes that are no UTF-8
    "to+ken=a",
    "t%6Fken=a",
    "token=客户&name=密钥",  # non-ASCII as sent
    "token=a\nb&c=\x00",
    " token = a ",
    "token=a&",
    "grant_type=client_credentials&scope=authz",
    "grant_type=client_credentials&scope=authz%20read",
]


@pytest.mark.parametrize("text", FORMS)
def test_the_pairs_are_parse_qsl_s(text: str) -> None:
    assert form_pairs(text) == parse_qsl(text, keep_blank_values=True)


def test_the_table_takes_both_ways() -> None:
    quick = [f for f in FORMS if "%" not in f and "+" not in f]
    assert len(quick) >= 20 and len(FORMS) - len(quick) >= 8
