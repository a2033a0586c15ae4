"""`[directory.dingtalk.<name>]` and `[directory.wecom.<name>]` tables: every key checked, the
app secret read from the named environment variable or file (never from the config file)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from idhub.config._values import Locator, Secret, coerce, field_types
from idhub.config.settings import OaSourceSettings

# kind -> (the id key, the secret's base name, the default server).
_KINDS = {
    "dingtalk": ("app_key", "app_secret", "https://oapi.dingtalk.com"),
    "wecom": ("corp_id", "corp_secret", "https://qyapi.weixin.qq.com"),
}
_POSITIVE = ("page_size", "batch_size", "timeout", "root_department")
# Sign-in settings only one platform has (the other refuses them by name).
_SIGN_IN_KEYS = {
    "dingtalk": {"api_url"},
    "wecom": {"app_login_url", "agent_id"},
}
_SIGN_IN_DEFAULTS = {
    "dingtalk": {"login_url": "https://login.dingtalk.com", "api_url": "https://api.dingtalk.com"},
    "wecom": {
        "login_url": "https://login.work.weixin.qq.com",
        "app_login_url": "https://open.weixin.qq.com",
    },
}
_URL = re.compile(r"^https?://[^/\s]+(/[^\s]*)?$")


def oa_sources(
    directory: Mapping[str, Any], *, env: Mapping[str, str], base: Path, locator: Locator
) -> dict[str, OaSourceSettings]:
    sources: dict[str, OaSourceSettings] = {}
    for kind in _KINDS:
        tables = directory.get(kind, {})
        if not isinstance(tables, dict):
            raise locator.error(f"[directory.{kind}] must be a table of named sources", kind)
        for name, table in tables.items():
            section = f"directory.{kind}.{name}"
            if not isinstance(table, dict):
                raise locator.error(f"[{section}] must be a table", section)
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,50}", name):
                raise locator.error(
                    f"source name {name!r} may use letters, digits, _ and - only", section
                )
            source = _source(kind, name, table, env=env, base=base, locator=locator)
            sources[source.source] = source
    return sources


def _source(
    kind: str,
    name: str,
    table: Mapping[str, Any],
    *,
    env: Mapping[str, str],
    base: Path,
    locator: Locator,
) -> OaSourceSettings:
    section = f"directory.{kind}.{name}"
    id_key, secret_key, default_url = _KINDS[kind]
    types = field_types(OaSourceSettings)
    other = next(k for k in _KINDS if k != kind)
    settable = set(types) - {"kind", "name", "client_id", "client_secret", "agent_secret"}
    settable -= _SIGN_IN_KEYS[other] - _SIGN_IN_KEYS[kind]
    special = {id_key, f"{secret_key}_env", f"{secret_key}_file"}
    if kind == "wecom":
        special |= {"agent_secret_env", "agent_secret_file"}
    kwargs: dict[str, Any] = {"kind": kind, "name": name, "base_url": default_url}
    for key, value in table.items():
        if key in special:
            continue
        if key == secret_key:
            raise locator.error(
                f"[{section}] {secret_key} must not be written in the config file; use "
                f"{secret_key}_env (an environment variable's name) or {secret_key}_file",
                section,
                key,
            )
        if key not in settable:
            known = ", ".join(sorted(settable | special))
            raise locator.error(f"unknown setting [{section}] {key} (known: {known})", section, key)
        kind_name = str(types[key])
        try:
            if kind_name in ("float | None", "str | None"):
                plain = kind_name.partition(" ")[0]
                kwargs[key] = coerce(value, plain, base=base, what=f"[{section}] {key}")
            else:
                kwargs[key] = coerce(value, kind_name, base=base, what=f"[{section}] {key}")
        except ValueError as exc:
            raise locator.error(str(exc), section, key) from None
    if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", str(kwargs["base_url"])):
        raise locator.error(
            f"[{section}] base_url must look like https://host[:port]", section, "base_url"
        )
    kwargs["base_url"] = str(kwargs["base_url"]).rstrip("/")
    for key in _POSITIVE:
        if key in kwargs and kwargs[key] <= 0:
            raise locator.error(f"[{section}] {key} must be positive", section, key)
    if kind == "dingtalk" and not 1 <= kwargs.get("page_size", 100) <= 100:
        raise locator.error(f"[{section}] page_size must be 1 to 100", section, "page_size")
    for key in ("retries", "retry_base", "rate_limit_wait"):
        if kwargs.get(key, 0) < 0:
            raise locator.error(f"[{section}] {key} must not be negative", section, key)
    listing = kwargs.get("member_listing", "user_list")
    if listing not in ("user_list", "list_id") or (kind == "dingtalk" and listing != "user_list"):
        choices = "user_list or list_id" if kind == "wecom" else "user_list"
        raise locator.error(
            f"[{section}] member_listing must be {choices}", section, "member_listing"
        )
    ratio = kwargs.get("max_disable_ratio")
    if ratio is not None and not 0 <= ratio <= 1:
        raise locator.error(
            f"[{section}] max_disable_ratio must be between 0 and 1", section, "max_disable_ratio"
        )
    client_id = table.get(id_key)
    if not isinstance(client_id, str) or not client_id:
        raise locator.error(f"[{section}] needs {id_key}", section)
    kwargs["client_id"] = client_id
    kwargs["client_secret"] = _secret(
        table, section, secret_key, env=env, base=base, locator=locator
    )
    _sign_in(kind, table, kwargs, section=section, env=env, base=base, locator=locator)
    return OaSourceSettings(**kwargs)


def _sign_in(
    kind: str,
    table: Mapping[str, Any],
    kwargs: dict[str, Any],
    *,
    section: str,
    env: Mapping[str, str],
    base: Path,
    locator: Locator,
) -> None:
    """The sign-in keys: the platform's hosts (defaults filled in), WeCom's agent."""
    for key, default in _SIGN_IN_DEFAULTS[kind].items():
        value = str(kwargs.get(key) or default)
        if not _URL.match(value):
            raise locator.error(
                f"[{section}] {key} must look like https://host[:port]", section, key
            )
        kwargs[key] = value.rstrip("/")
    if kind != "wecom":
        return
    agent = kwargs.get("agent_id")
    if agent is not None and not re.fullmatch(r"[0-9]{1,20}", agent):
        raise locator.error(f"[{section}] agent_id must be the app's number", section, "agent_id")
    if kwargs.get("sign_in") and not agent:
        raise locator.error(
            f"[{section}] sign_in = true needs agent_id (the sign-in app's AgentId)",
            section,
            "sign_in",
        )
    if table.get("agent_secret_env") or table.get("agent_secret_file"):
        kwargs["agent_secret"] = _secret(
            table, section, "agent_secret", env=env, base=base, locator=locator
        )


def _secret(
    table: Mapping[str, Any],
    section: str,
    name: str,
    *,
    env: Mapping[str, str],
    base: Path,
    locator: Locator,
) -> Secret:
    variable = table.get(f"{name}_env")
    file = table.get(f"{name}_file")
    if variable and file:
        raise locator.error(
            f"[{section}] set {name}_env or {name}_file, not both", section, f"{name}_file"
        )
    if variable:
        if not isinstance(variable, str) or not env.get(variable):
            raise locator.error(
                f"[{section}] {name}_env names {variable!r}, which is not set",
                section,
                f"{name}_env",
            )
        return Secret(env[variable])
    if file:
        path = Path(str(file)).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise locator.error(
                f"[{section}] cannot read {name}_file: {exc.strerror or exc}",
                section,
                f"{name}_file",
            ) from None
        if value:
            return Secret(value)
    raise locator.error(f"[{section}] needs {name}_env or {name}_file", section)
