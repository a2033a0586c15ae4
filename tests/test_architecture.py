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
        # Settings are read by config and passed in as values, never looked up from core.
        "idhub.config",
    ),
    "adapters": (
        "idhub.oidc",
        "idhub.cas",
        "idhub.saml",
        "idhub.web",
        "idhub.cli",
        "idhub.bootstrap",
        "starlette",
        "uvicorn",
    ),
    # The provider works on storage Protocols; which database sits behind them is bootstrap's.
    "oidc": ("idhub.web", "idhub.cli", "idhub.adapters", "sqlalchemy", "starlette", "uvicorn"),
    # The CAS and SAML fronts are framework-free like oidc/ and meet storage only through ports.
    "cas": (
        "idhub.web",
        "idhub.cli",
        "idhub.oidc",
        "idhub.saml",
        "idhub.adapters",
        "sqlalchemy",
        "starlette",
        "uvicorn",
    ),
    "saml": (
        "idhub.web",
        "idhub.cli",
        "idhub.oidc",
        "idhub.cas",
        "idhub.adapters",
        "sqlalchemy",
        "starlette",
        "uvicorn",
    ),
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
    # Routes parse, call a service and render; storage is reached only through Services.
    "web": ("idhub.cli", "idhub.adapters", "sqlalchemy"),
    "cli": ("idhub.adapters", "sqlalchemy"),
    "bootstrap": ("idhub.cli", "idhub.web"),
    # The supervisor runs the jobs it is handed; it knows nothing of what they do.
    "runtime": (
        "idhub.core",
        "idhub.adapters",
        "idhub.oidc",
        "idhub.web",
        "idhub.cli",
        "idhub.bootstrap",
        "starlette",
        "sqlalchemy",
    ),
}
# Route handlers stay short: a longer one is holding a decision that belongs in core/ or oidc/.
MAX_WEB_FUNCTION_LINES = 60
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


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path) -> set[str]:
    """Every name an import may load when the module runs (inside functions too), without the
    `if TYPE_CHECKING:` blocks, which never run."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _is_type_checking(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports at run time."""
    paths = {
        _module_name(p, root): p for p in sorted(root.rglob("*.py")) if "migrations" not in p.parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for imported in _runtime_imports(path):
            while imported and imported not in paths:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def long_functions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{path.name}:{node.lineno} {node.name} is {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


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


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph(SRC))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_web_functions_are_short() -> None:
    found = [
        line
        for path in sorted((SRC / "web").rglob("*.py"))
        for line in long_functions(path, MAX_WEB_FUNCTION_LINES)
    ]
    assert not found, "\n".join(found)


def test_cycle_and_length_checks_can_fail(tmp_path: Path) -> None:
    """The checkers themselves must be able to fail."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "a.py").write_text("from pkg.b import x\n", encoding="utf-8")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n", encoding="utf-8")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        encoding="utf-8",
    )
    (pkg / "d.py").write_text("import pkg.c\n", encoding="utf-8")
    assert find_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    (pkg / "long.py").write_text(f"def handler():\n{body}\n", encoding="utf-8")
    assert long_functions(pkg / "long.py", MAX_WEB_FUNCTION_LINES) == [
        "long.py:1 handler is 62 lines"
    ]
