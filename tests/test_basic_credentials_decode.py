"""`client_auth.basic_credentials` decodes the Basic header with `binascii.a2b_base64(...,
strict_mode=True)`: the same acceptance as `base64.b64decode(..., validate=True)`, held here
to the answers of a decode written that way, on awkward inputs (padding, whitespace,
characters outside the alphabet, non-ASCII text, bytes that are no UTF-8)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

import pytest

from idhub.oidc.client_auth import basic_credentials


def _by_b64decode(header: str) -> tuple[str, str] | None:
    """`basic_credentials` as it was written with `base64.b64decode(validate=True)`."""
    _, _, credentials = header.strip().partition(" ")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, colon, secret = decoded.partition(":")
    client_id = unquote(client_id)
    if not colon or not client_id or "\x00" in client_id:
        return None
    return client_id, unquote(secret)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


AWKWARD = [
    _b64(b"rs:secret"),
    _b64(b"rs:secret") + " ",
    " " + _b64(b"rs:secret"),
    _b64(b"rs:secret") + "\n",
    _b64(b"rs:secret") + "\t",
    _b64(b"r:s"),  # padded with one "="
    _b64(b"r:s").rstrip("="),  # padding left off
    _b64(b"rs:s"),  # two "="
    _b64(b"rs:s").rstrip("="),
    _b64(b"rs:s")[:-1],  # one "=" of two
    _b64(b"rs:s") + "=",  # three "="
    _b64(b"rs:s") + _b64(b"x:y"),  # data after the padding
    "=" + _b64(b"rs:secret"),
    "",
    "=",
    "==",
    "A",
    "AA",
    "AAA",
    "AAAA",
    "cnM6c2Vj cmV0",  # a space inside
    "cnM6c2Vj\ncmV0",  # a newline inside
    "cnM6c2VjcmV0!",  # outside the alphabet
    "cnM6c2-jcmV0",  # the URL-safe alphabet
    "cnM6c2_jcmV0",
    "cnM6c2VjcmV0\x00",
    "cnM6c2VjcmV0é",  # not ASCII
    "ｃnM6c2VjcmV0",  # a fullwidth letter
    _b64(b"\xff\xfe:secret"),  # no UTF-8
    _b64(b"rs:\x80"),
    _b64("客户:密钥".encode()),
    _b64(b"a%3Ab:c%20d"),  # form-encoded inside
    _b64(b"rs:sec:ret"),
    _b64(b":secret"),
    _b64(b"nocolon"),
    _b64(b"r\x00s:secret"),
    _b64(b"rs:"),
    _b64(b"%00:x"),
    # What `unquote` would change, where the decode now calls it only for a "%".
    _b64(b"id:a+b%20c"),
    _b64(b"id:%ZZ%"),
    _b64(b"%C3%A9t%C3%A9:%FF"),
    _b64(b"%:x"),
    _b64(b"id::x:y"),
    _b64(b"bench-es:a%2Fb"),
]


@pytest.mark.parametrize("value", AWKWARD)
def test_the_same_answer_as_b64decode_with_validate(value: str) -> None:
    for header in (f"Basic {value}", f"basic  {value}", f"Basic\t{value}"):
        assert basic_credentials(header) == _by_b64decode(header), header


def test_the_table_holds_both_outcomes() -> None:
    """The inputs are awkward both ways: some decode, many are refused."""
    answers = [basic_credentials(f"Basic {value}") for value in AWKWARD]
    assert ("rs", "secret") in answers and ("a:b", "c d") in answers
    assert ("客户", "密钥") in answers and ("bench-es", "a/b") in answers
    assert sum(answer is None for answer in answers) >= 20
