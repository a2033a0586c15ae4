"""Settings: the only reader of `idhub.toml` and of `IDHUB_*` environment variables.

Settings are frozen dataclasses built once by `load_settings` and passed down explicitly.
A bad file is reported with `file:line`; secrets are wrapped in `Secret` so they never
print. Relative paths are resolved against the directory holding the config file (or the
working directory when there is none).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from idhub.core.directory_mapping import PRESETS, AttributeMap, attribute_map
from idhub.errors import ConfigError

DEFAULT_CONFIG_NAME = "idhub.toml"


class Secret:
    """A string that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class ServerSettings:
    issuer: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Where the browser-facing pages default their language when Accept-Language says nothing.
    default_locale: str = "zh-CN"
    # Systems allowed to read the audit API before the authorization policy governs it.
    admin_clients: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/idhub.db"
    echo: bool = False
    pool_size: int = 10

    def __repr__(self) -> str:
        return (
            f"DatabaseSettings(url={redact_url(self.url)!r}, echo={self.echo}, "
            f"pool_size={self.pool_size})"
        )


@dataclass(frozen=True)
class TokenSettings:
    access_token_ttl: int = 600
    id_token_ttl: int = 600
    refresh_token_ttl: int = 30 * 24 * 3600
    code_ttl: int = 60
    session_ttl: int = 10 * 3600
    default_access_token_alg: str = "ES256"  # noqa: S105 - an algorithm name


@dataclass(frozen=True)
class PolicySettings:
    dir: Path = Path("policies")
    domains: tuple[str, ...] = ("oa", "reimburse", "erp", "archive")
    watch: bool = True


@dataclass(frozen=True)
class AuditSettings:
    # Denials are always recorded; this decides what happens to allows.
    decisions: str = "sampled"
    sample_rate: float = 0.01
    jsonl_path: Path | None = None
    syslog: str = ""


@dataclass(frozen=True)
class SyncSettings:
    interval: int = 300
    full_interval: int = 86400
    max_disable_ratio: float = 0.10


@dataclass(frozen=True)
class LdapSourceSettings:
    """One `[directory.ldap.<name>]` table, presets applied (see docs/directory.md)."""

    name: str
    url: str
    user_base: str
    attributes: AttributeMap
    user_filter: str
    group_filter: str
    department_filter: str
    change_mark: str = "timestamp"
    preset: str = "openldap"
    start_tls: bool = False
    ca_file: Path | None = None
    tls_verify: bool = True
    connect_timeout: float = 5.0
    timeout: float = 30.0
    bind_dn: str = ""
    bind_password: Secret | None = None
    group_base: str = ""
    department_from: str = "dn"
    department_base: str = ""
    membership: str = "member"
    page_size: int = 500
    max_disable_ratio: float | None = None
    pool_size: int = 4
    id_check_interval: int = 900
    batch_size: int = 1000
    # Seconds the directory's clock may be ahead of ours (see settled_mark).
    clock_skew: int = 30

    @property
    def source(self) -> str:
        return f"ldap:{self.name}"


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    var_dir: Path = Path("var")
    secret_key_file: Path = Path("var/secret.key")
    secret_key: Secret | None = None
    config_file: Path | None = None
    # Raw `[directory.*]` tables; the LDAP/OA source settings are parsed from these.
    directory: Mapping[str, Any] = field(default_factory=dict)
    # `[directory.ldap.<name>]` parsed and checked (name -> settings).
    ldap_sources: Mapping[str, LdapSourceSettings] = field(default_factory=dict)

    def require_secret_key(self) -> Secret:
        if self.secret_key is None or not self.secret_key:
            raise ConfigError(
                "no secret key is configured",
                hint=f"run `idhub init` to create {self.secret_key_file} or set IDHUB_SECRET_KEY",
            )
        return self.secret_key


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "tokens": TokenSettings,
    "policy": PolicySettings,
    "audit": AuditSettings,
    "sync": SyncSettings,
}
_TOP_LEVEL = {"var_dir", "secret_key_file"}

# IDHUB_* variable -> (section or "", field)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "IDHUB_ISSUER": ("server", "issuer"),
    "IDHUB_HOST": ("server", "host"),
    "IDHUB_PORT": ("server", "port"),
    "IDHUB_WORKERS": ("server", "workers"),
    "IDHUB_DATABASE_URL": ("database", "url"),
    "IDHUB_POLICY_DIR": ("policy", "dir"),
    "IDHUB_VAR_DIR": ("", "var_dir"),
    "IDHUB_SECRET_KEY_FILE": ("", "secret_key_file"),
    "IDHUB_AUDIT_DECISIONS": ("audit", "decisions"),
}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("audit", "decisions"): ("all", "sampled", "none"),
    ("tokens", "default_access_token_alg"): ("RS256", "ES256", "EdDSA"),
}


class _Locator:
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


def _coerce(value: Any, target: Any, *, base: Path, what: str) -> Any:
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
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{what} must be a list of strings")
        return tuple(value)
    raise ValueError(f"{what}: unsupported setting type {kind}")


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in fields(cls)}


def _build_section(
    cls: type,
    values: Mapping[str, Any],
    *,
    section: str,
    base: Path,
    fail: Callable[[str, str, str | None], ConfigError],
) -> Any:
    types = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            known = ", ".join(sorted(types))
            raise fail(f"unknown setting [{section}] {key} (known: {known})", section, key)
        try:
            kwargs[key] = _coerce(value, types[key], base=base, what=f"[{section}] {key}")
        except ValueError as exc:
            raise fail(str(exc), section, key) from None
        choices = _CHOICES.get((section, key))
        if choices and kwargs[key] not in choices:
            raise fail(f"[{section}] {key} must be one of {', '.join(choices)}", section, key)
    instance = cls(**kwargs)
    # Defaults that are relative paths follow the same rule as values from the file.
    for f in fields(cls):
        current = getattr(instance, f.name)
        if f.name not in kwargs and isinstance(current, Path) and not current.is_absolute():
            instance = replace(instance, **{f.name: base / current})
    return instance


def find_config_file(env: Mapping[str, str], cwd: Path) -> Path | None:
    explicit = env.get("IDHUB_CONFIG")
    if explicit:
        return Path(explicit)
    candidate = cwd / DEFAULT_CONFIG_NAME
    return candidate if candidate.exists() else None


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Reads the config file (if any) and applies `IDHUB_*` overrides from `env`."""
    env = dict(os.environ) if env is None else dict(env)
    cwd = Path.cwd() if cwd is None else cwd
    if path is None:
        path = find_config_file(env, cwd)
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", file=str(path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file: {exc}", file=str(path)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError carries the position only in its message.
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = int(found.group(1)) if found else getattr(exc, "lineno", None)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", getattr(exc, "msg", str(exc)))
        raise ConfigError(f"not valid TOML: {message}", file=str(path), line=line) from None

    base = (path.parent if path is not None else cwd).resolve()
    locator = _Locator(path, text)
    env_locator = _Locator(None, "")

    # Environment overrides are merged into the document so they go through the same checks.
    overridden: set[tuple[str, str]] = set()
    for var, (section, key) in ENV_OVERRIDES.items():
        if var in env and env[var] != "":
            target = doc if section == "" else doc.setdefault(section, {})
            if not isinstance(target, dict):
                raise locator.error(f"[{section}] must be a table", section)
            target[key] = env[var]
            overridden.add((section, key))

    def fail(message: str, section: str, key: str | None) -> ConfigError:
        if key is not None and (section, key) in overridden:
            var = next(v for v, sk in ENV_OVERRIDES.items() if sk == (section, key))
            return ConfigError(f"{message} (from {var})", file="<environment>")
        return locator.error(message, section, key)

    sections: dict[str, Any] = {}
    for name, value in doc.items():
        if name in _SECTIONS:
            if not isinstance(value, dict):
                raise locator.error(f"[{name}] must be a table", name)
            sections[name] = _build_section(
                _SECTIONS[name], value, section=name, base=base, fail=fail
            )
        elif name == "directory":
            if not isinstance(value, dict):
                raise locator.error("[directory] must be a table", name)
        elif name in _TOP_LEVEL or name == "secret_key":
            continue
        else:
            known = ", ".join(sorted([*_SECTIONS, "directory", *_TOP_LEVEL]))
            raise locator.error(f"unknown section or setting {name!r} (known: {known})", name)
    if "secret_key" in doc:
        raise locator.error(
            "secret_key must not be written in the config file; "
            "use secret_key_file or the IDHUB_SECRET_KEY environment variable",
            "",
            "secret_key",
        )

    top: dict[str, Path] = {}
    for key in sorted(_TOP_LEVEL):
        if key in doc:
            try:
                top[key] = _coerce(doc[key], "Path", base=base, what=key)
            except ValueError as exc:
                raise fail(str(exc), "", key) from None
    var_dir = top.get("var_dir", base / "var")
    secret_key_file = top.get("secret_key_file", var_dir / "secret.key")

    for name, cls in _SECTIONS.items():
        if name not in sections:
            sections[name] = _build_section(cls, {}, section=name, base=base, fail=fail)
    database: DatabaseSettings = sections["database"]
    if "url" not in doc.get("database", {}):
        database = replace(database, url=f"sqlite:///{var_dir / 'idhub.db'}")
    sections["database"] = database

    secret: Secret | None = None
    if env.get("IDHUB_SECRET_KEY"):
        secret = Secret(env["IDHUB_SECRET_KEY"])
    elif secret_key_file.exists():
        try:
            secret = Secret(secret_key_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(f"cannot read secret key: {exc}", file=str(secret_key_file)) from None
    del env_locator

    return Settings(
        server=sections["server"],
        database=sections["database"],
        tokens=sections["tokens"],
        policy=sections["policy"],
        audit=sections["audit"],
        sync=sections["sync"],
        var_dir=var_dir,
        secret_key_file=secret_key_file,
        secret_key=secret,
        config_file=path,
        directory=doc.get("directory", {}),
        ldap_sources=_ldap_sources(doc.get("directory", {}), env=env, base=base, locator=locator),
    )


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data for `idhub config check`, secrets redacted."""

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return "**********"
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if hasattr(value, "__dataclass_fields__"):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        return value

    out = plain(settings)
    out["secret_key"] = "**********" if settings.secret_key else None
    out["database"]["url"] = redact_url(settings.database.url)
    return out  # type: ignore[no-any-return]


def redact_url(url: str) -> str:
    """Hides a password inside a database URL."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", url)


# ------------------------------------------------------------------ [directory.ldap.<name>]

_LDAP_CHOICES = {
    "preset": tuple(PRESETS),
    "department_from": ("dn", "attribute"),
    "membership": ("member", "uniqueMember", "memberOf"),
}
_LDAP_SPECIAL = {"bind_password_env", "bind_password_file", "attributes", "bind_password"}


def _ldap_sources(
    directory: Mapping[str, Any], *, env: Mapping[str, str], base: Path, locator: _Locator
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
    name: str, table: Mapping[str, Any], *, env: Mapping[str, str], base: Path, locator: _Locator
) -> LdapSourceSettings:
    section = f"directory.ldap.{name}"
    types = _field_types(LdapSourceSettings)
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
                    else _coerce(value, "float", base=base, what=f"[{section}] {key}")
                )
            else:
                kwargs[key] = _coerce(value, kind, base=base, what=f"[{section}] {key}")
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
    table: Mapping[str, Any], section: str, *, env: Mapping[str, str], base: Path, locator: _Locator
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
