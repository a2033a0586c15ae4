"""The JSON text of an OAuth answer's body, a token's compact string copied as it is.

Every token answer carries at least one compact JWS (some 400 characters of base64url and
two dots), and json's string encoder reads each of its characters to see whether it needs
an escape: about 18,000 of the ~850,000 instructions of a client-credentials token in
process (callgrind, bench/bench_asgi.py). No character of base64url, nor the dot, ever needs
one, so a string made of them only is its own JSON text between quotes; one
`bytes.translate` pass that deletes them all and leaves nothing proves it (`str.isascii` is
a flag, and encoding an ASCII string is a copy).

Only flat bodies of exact `str` keys and `str`, `int`, `bool` or `None` values (what the
provider answers with) are built here; anything else goes to json's encoder whole. The bytes
are always those of `json.dumps(body, separators=(",", ":"), ensure_ascii=False)` encoded as
UTF-8 (tests/test_answer_json.py).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

# Reused: `json.dumps` with options builds a new encoder on every call (same bytes out).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# base64url's alphabet and the dot between a compact JWS's parts: none is escaped in JSON.
_COMPACT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
# Shorter strings go to json's encoder: for them the check costs about what it saves.
_CHECKED_FROM = 48


def answer_json(body: dict[str, Any]) -> bytes:
    """`body` as the JSON the provider answers with (UTF-8)."""
    items: list[str] = []
    for key, value in body.items():
        if key.__class__ is not str:
            return _encoded(body)
        kind = value.__class__
        if kind is str:
            if (
                len(value) >= _CHECKED_FROM
                and value.isascii()
                and not value.encode("ascii").translate(None, _COMPACT)
            ):
                text = f'"{value}"'
            else:
                text = encode_basestring(value)
        elif kind is int:
            text = int.__repr__(value)  # what json writes for an int
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:  # floats, lists, dicts, subclasses: json's own rules, for the whole body
            return _encoded(body)
        name = _KEYS.get(key)
        if name is None:
            name = encode_basestring(key) + ":"
            if len(_KEYS) < _KEYS_KEPT:
                _KEYS[key] = name
        items.append(name + text)
    return ("{" + ",".join(items) + "}").encode()


# The answers' keys (the provider's constants) with their JSON text and colon; the bound only
# caps what an odd body could add.
_KEYS: dict[str, str] = {}
_KEYS_KEPT = 256


def _encoded(body: dict[str, Any]) -> bytes:
    return _ENCODER.encode(body).encode()
