"""`idhub.sdk` imports and works with nothing of the server installed: a fresh interpreter
(`-I -S`: no site-packages, no environment) whose path holds the standard library, the SDK's
own source and only the packages the `sdk` extra names (httpx, cryptography and what they
need). Anything else it tried to import would fail there."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import cryptography
import httpx

from tests.conftest import REPO

# The SDK extra's packages and what they import in turn (httpx: httpcore, h11, anyio,
# sniffio, idna, certifi; cryptography: cffi).
ALLOWED = ("httpx", "httpcore", "h11", "anyio", "sniffio", "idna", "certifi", "cryptography",
           "cffi", "_cffi_backend", "typing_extensions")  # fmt: skip

CHILD = r"""
import importlib, pkgutil, sys
import idhub.sdk
names = [m.name for m in pkgutil.iter_modules(idhub.sdk.__path__, "idhub.sdk.")]
for name in names:
    if name != "idhub.sdk.starlette":  # the ASGI glue needs Starlette, by design
        importlib.import_module(name)
server = sorted(m for m in sys.modules if m.startswith("idhub.") and not m.startswith("idhub.sdk"))
assert not server, server
# Not just importable: the SQL filter and a token check run without the server.
from idhub.sdk.data_scope import DataScope, DepartmentScope
where, params = DataScope(False, True, (DepartmentScope("/总部", True),)).sql_where(
    owner_column="o", dept_column="d", me="Bob")
assert params["idhub_me"] == "bob", params
from idhub.sdk import errors
from idhub.sdk.jws import parse
try:
    parse("x.y")
except errors.MalformedToken:
    pass
try:
    import starlette
except ImportError:
    print("ok", len(names))
"""


def _environment(tmp_path: Path) -> Path:
    site = Path(httpx.__file__).resolve().parents[1]
    assert Path(cryptography.__file__).resolve().parents[1] == site
    root = tmp_path / "path"
    (root / "idhub").mkdir(parents=True)
    src = REPO / "src" / "idhub"
    (root / "idhub" / "__init__.py").symlink_to(src / "__init__.py")
    (root / "idhub" / "sdk").symlink_to(src / "sdk")
    for entry in site.iterdir():
        if entry.name.split(".")[0] in ALLOWED and not entry.name.endswith("-info"):
            (root / entry.name).symlink_to(entry)
    return root


def test_the_sdk_needs_nothing_of_the_server(tmp_path: Path) -> None:
    root = _environment(tmp_path)
    code = (
        f"import sys; sys.path.append({str(root)!r}); "
        + "exec(compile("
        + repr(CHILD)
        + ", 'child', 'exec'))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok"), done.stdout


def test_the_sdk_is_an_optional_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = {req.split(">")[0].split("=")[0].split("[")[0].strip().lower()
             for req in project["optional-dependencies"]["sdk"]}  # fmt: skip
    assert extra == {"httpx", "cryptography"}
