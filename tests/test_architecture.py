"""Fails when an import arrow points the wrong way (see docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "idhub"

# layer -> modules it must never import (prefix match on the dotted name)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": (
        "idhub.adapters",
        "idhub.oidc",
        "idhub.web",
        "idhub.cli",
        "idhub.bootstrap",
        "idhub.sdk",
        "starlette",
        "sqlalchemy",
        "ldap3",
        "uvicorn",
        "httpx",
        "alembic",
    ),
    "adapters": ("idhub.oidc", "idhub.web", "idhub.cli", "idhub.bootstrap", "starlette", "uvicorn"),
    "oidc": ("idhub.web", "idhub.cli", "starlette", "uvicorn"),
    "sdk": (
        "idhub.core",
        "idhub.adapters",
        "idhub.oidc",
        "idhub.web",
        "idhub.cli",
        "idhub.bootstrap",
        "idhub.config",
        "sqlalchemy",
        "authlib",
    ),
    "web": ("idhub.cli",),
}
STARLETTE_ALLOWED = ("web", "sdk/starlette.py", "cli")


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_layering(path: Path) -> None:
    layer = _layer(path)
    rel = str(path.relative_to(SRC))
    bad = []
    for line, name in _imports(path):
        forbidden = FORBIDDEN.get(layer, ())
        if layer == "sdk" and rel == "sdk/starlette.py":
            forbidden = tuple(f for f in forbidden if f != "starlette")
        if _matches(name, forbidden):
            bad.append(f"{rel}:{line} imports {name}")
        if _matches(name, ("starlette",)) and not rel.startswith(STARLETTE_ALLOWED):
            bad.append(f"{rel}:{line} imports starlette outside web/")
    assert not bad, "\n".join(bad)


def test_only_cli_exits_and_only_config_reads_environment() -> None:
    offenders = []
    for path in _modules():
        rel = str(path.relative_to(SRC))
        text = path.read_text(encoding="utf-8")
        if "sys.exit(" in text and rel != "cli/__init__.py":
            offenders.append(f"{rel} calls sys.exit")
        if ("os.getenv" in text or "os.environ" in text) and not (
            rel.startswith(("config/", "cli/"))
        ):
            offenders.append(f"{rel} reads the environment")
    assert not offenders, "\n".join(offenders)


def test_rule_catches_a_wrong_arrow(tmp_path: Path) -> None:
    """The checker itself must be able to fail."""
    bad = tmp_path / "bad.py"
    bad.write_text("from idhub.web.app import create_app\n", encoding="utf-8")
    assert _matches(_imports(bad)[0][1], FORBIDDEN["core"])
