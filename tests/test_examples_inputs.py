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


def test_the_systems_import_nothing_of_idhub_but_the_sdk() -> None:
    """OA and reimbursement are what a company's own systems would be: they may use idhub.sdk,
    never the server (the `make demo` launcher, examples/demo.py, drives the server's CLI)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    offending = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "demo.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name.split(".")[0] == "idhub" and not name.startswith("idhub.sdk"):
                    offending.append(f"{path.relative_to(root)}: {name}")
    assert offending == []
