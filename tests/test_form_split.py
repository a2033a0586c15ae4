"""`web/oauth.py` `split_form`: its quick split of a body without `+` or `%` answers what
`parse_qsl(..., keep_blank_values=True)` answers, for every body here (the general parser
is the reference, so a difference in either direction fails)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from idhub.web.oauth import split_form

BODIES = [
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


@pytest.mark.parametrize("body", BODIES)
def test_split_form_answers_as_parse_qsl(body: str) -> None:
    assert split_form(body) == parse_qsl(body, keep_blank_values=True, strict_parsing=False)


def test_the_table_takes_both_ways() -> None:
    quick = [b for b in BODIES if "%" not in b and "+" not in b]
    assert len(quick) >= 20 and len(BODIES) - len(quick) >= 8
