"""What a person or a crafted link can type into the example systems: amounts and the page to
return to after signing in (never another site)."""

from __future__ import annotations

import pytest
from examples.shared.money import parse_fen, yuan
from examples.shared.sso import _local


@pytest.mark.parametrize(
    ("text", "fen"), [("1280", 128_000), ("1,280.5", 128_050), (" 0.01 ", 1), ("3,600.00", 360_000)]
)
def test_amounts_in_fen(text: str, fen: int) -> None:
    assert parse_fen(text) == fen
    assert parse_fen(yuan(fen)) == fen


@pytest.mark.parametrize("text", ["", "abc", "-5", "0", "1.001", "NaN", "Infinity", "1e20"])
def test_bad_amounts_are_one_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="金额"):
        parse_fen(text)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        "evil",
        "/ok\r\nSet-Cookie: x=1",
        "javascript:alert(1)",
    ],
)
def test_next_never_leaves_the_system(target: str) -> None:
    assert _local(target) == "/"


def test_next_keeps_a_local_page() -> None:
    assert _local("/archive?page=2") == "/archive?page=2"
