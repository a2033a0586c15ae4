"""Values shared by the settings readers: the redacting `Secret` (defined in core, which takes
it as given), typed coercion of TOML and environment values, and the locator that turns a
section or key into `file:line`."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from idhub.core.secret import Secret
from idhub.errors import ConfigError

__all__ = ["Locator", "Secret", "coerce", "field_types", "redact_url"]


class Locator:
    """Finds the line of a `[section]` or `key =` in the TOML text for error messages."""

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self._lines = text.splitlines()

    def line_of(self, section: str, key: str | None = None) -> int | None:
        current = ""
        header = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")
        for number, raw in enumerate(self._lines, start=1):
            match = header.match(raw)
            if match:
                current = match.group(1).replace('"', "").replace(" ", "")
                if key is None and current == section:
                    return number
                continue
            if key is not None and current == section:
                if re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", raw):
                    return number
        return None

    def error(self, message: str, section: str, key: str | None = None) -> ConfigError:
        where = str(self.path) if self.path else "<environment>"
        return ConfigError(message, file=where, line=self.line_of(section, key))


def coerce(value: Any, target: Any, *, base: Path, what: str) -> Any:
    """Turns a TOML or environment value into the field's type, or raises ValueError."""
    kind = str(target)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        words = {"1", "true", "yes", "on", "0", "false", "no", "off"}
        if isinstance(value, str) and value.lower() in words:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ValueError(f"{what} must be true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"{what} must be a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a whole number, not {value!r}") from None
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a number, not {value!r}") from None
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string")
        return value
    if kind in {"Path", "Path | None"}:
        if value in (None, ""):
            if kind == "Path | None":
                return None
            raise ValueError(f"{what} must be a path")
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a path string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if kind == "Secret | None":
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string")
        return Secret(value)
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{what} must be a list of strings")
        return tuple(value)
    raise ValueError(f"{what}: unsupported setting type {kind}")


def field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in fields(cls)}


def redact_url(url: str) -> str:
    """Hides a password inside a database URL."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", url)
