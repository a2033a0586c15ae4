"""`[directory.ldap.<name>]` tables: presets applied, every key checked, bind passwords read
from the named environment variable or file (never from the config file itself)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from idhub.config._values import Locator, Secret, coerce, field_types
from idhub.config.settings import LdapSourceSettings
from idhub.core.directory.mapping import PRESETS, AttributeMap, attribute_map

_LDAP_CHOICES = {
    "preset": tuple(PRESETS),
    "department_from": ("dn", "attribute"),
    "membership": ("member", "uniqueMember", "memberOf"),
}
_LDAP_SPECIAL = {"bind_password_env", "bind_password_file", "attributes", "bind_password"}


def ldap_sources(
    directory: Mapping[str, Any], *, env: Mapping[str, str], base: Path, locator: Locator
) -> dict[str, LdapSourceSettings]:
    tables = directory.get("ldap", {})
    if not isinstance(tables, dict):
        raise locator.error("[directory.ldap] must be a table of named sources", "directory.ldap")
    sources: dict[str, LdapSourceSettings] = {}
    for name, table in tables.items():
        section = f"directory.ldap.{name}"
        if not isinstance(table, dict):
            raise locator.error(f"[{section}] must be a table", section)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", name):
            raise locator.error(
                f"LDAP source name {name!r} may use letters, digits, _ and - only", section
            )
        sources[name] = _ldap_source(name, table, env=env, base=base, locator=locator)
    return sources


def _ldap_source(
    name: str, table: Mapping[str, Any], *, env: Mapping[str, str], base: Path, locator: Locator
) -> LdapSourceSettings:
    section = f"directory.ldap.{name}"
    types = field_types(LdapSourceSettings)
    settable = set(types) - {"name", "attributes", "bind_password", "change_mark"}
    for key in ("url", "user_base"):
        if not table.get(key):
            raise locator.error(f"[{section}] needs {key}", section)
    preset_name = table.get("preset", "openldap")
    if preset_name not in PRESETS:
        raise locator.error(
            f"[{section}] preset must be one of {', '.join(PRESETS)}", section, "preset"
        )
    preset = PRESETS[preset_name]
    kwargs: dict[str, Any] = {
        "name": name,
        "user_filter": preset.user_filter,
        "group_filter": preset.group_filter,
        "department_filter": preset.department_filter,
        "change_mark": preset.change_mark,
    }
    for key, value in table.items():
        if key in _LDAP_SPECIAL:
            continue
        if key not in settable:
            known = ", ".join(sorted(settable | _LDAP_SPECIAL - {"bind_password"}))
            raise locator.error(f"unknown setting [{section}] {key} (known: {known})", section, key)
        kind = str(types[key])
        try:
            if kind == "float | None":
                kwargs[key] = (
                    None
                    if value in (None, "")
                    else coerce(value, "float", base=base, what=f"[{section}] {key}")
                )
            else:
                kwargs[key] = coerce(value, kind, base=base, what=f"[{section}] {key}")
        except ValueError as exc:
            raise locator.error(str(exc), section, key) from None
        choices = _LDAP_CHOICES.get(key)
        if choices and kwargs[key] not in choices:
            message = f"[{section}] {key} must be one of {', '.join(choices)}"
            raise locator.error(message, section, key)
    url = str(kwargs["url"])
    if not re.match(r"^ldaps?://[^/\s]+/?$", url):
        raise locator.error(
            f"[{section}] url must look like ldap://host:389 or ldaps://host:636", section, "url"
        )
    if url.startswith("ldaps://") and kwargs.get("start_tls"):
        raise locator.error(f"[{section}] start_tls is for ldap:// URLs", section, "start_tls")
    ratio = kwargs.get("max_disable_ratio")
    if ratio is not None and not 0 <= ratio <= 1:
        raise locator.error(
            f"[{section}] max_disable_ratio must be between 0 and 1", section, "max_disable_ratio"
        )
    for key in ("page_size", "batch_size", "pool_size"):
        if kwargs.get(key, 1) < 1:
            raise locator.error(f"[{section}] {key} must be positive", section, key)
    ca_file = kwargs.get("ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        raise locator.error(f"[{section}] ca_file {ca_file} does not exist", section, "ca_file")

    if "bind_password" in table:
        raise locator.error(
            f"[{section}] bind_password must not be written in the config file; "
            "use bind_password_env (the name of an environment variable) or bind_password_file",
            section,
            "bind_password",
        )
    kwargs["bind_password"] = _ldap_password(table, section, env=env, base=base, locator=locator)

    mapping = table.get("attributes", {})
    if not isinstance(mapping, dict):
        raise locator.error(f"[{section}] attributes must be a table", section, "attributes")
    overrides: dict[str, str | tuple[str, ...]] = {}
    sub = f"{section}.attributes"
    for key, value in mapping.items():
        if key not in AttributeMap.keys():
            known = ", ".join(AttributeMap.keys())
            raise locator.error(f"unknown attribute mapping {key!r} (known: {known})", sub, key)
        if key == "disabled_values":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise locator.error(f"[{sub}] disabled_values must be a list of strings", sub, key)
            overrides[key] = tuple(value)
        elif isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9;-]*", value):
            overrides[key] = value
        else:
            raise locator.error(f"[{sub}] {key} must be an attribute name", sub, key)
    kwargs["attributes"] = attribute_map(preset_name, overrides)
    kwargs["preset"] = preset_name
    return LdapSourceSettings(**kwargs)


def _ldap_password(
    table: Mapping[str, Any], section: str, *, env: Mapping[str, str], base: Path, locator: Locator
) -> Secret | None:
    variable = table.get("bind_password_env")
    file = table.get("bind_password_file")
    if variable and file:
        raise locator.error(
            f"[{section}] set bind_password_env or bind_password_file, not both",
            section,
            "bind_password_file",
        )
    if variable:
        if not isinstance(variable, str):
            raise locator.error(
                f"[{section}] bind_password_env must be a variable name",
                section,
                "bind_password_env",
            )
        if not env.get(variable):
            raise locator.error(
                f"[{section}] bind_password_env names {variable}, which is not set",
                section,
                "bind_password_env",
            )
        return Secret(env[variable])
    if file:
        path = Path(str(file)).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            return Secret(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise locator.error(
                f"[{section}] cannot read bind_password_file: {exc.strerror or exc}",
                section,
                "bind_password_file",
            ) from None
    return None
