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
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from idhub.config._values import Locator, Secret, coerce, field_types, redact_url
from idhub.config.defences import check_defences, check_request_budget
from idhub.config.identity import identity_rules
from idhub.config.ldap import ldap_sources
from idhub.config.oa import oa_sources
from idhub.config.production import production_problem, require_production_ready
from idhub.config.scim import scim_sources
from idhub.config.settings import (
    AuditSettings,
    CasSettings,
    DatabaseSettings,
    DefencesSettings,
    LdapSourceSettings,
    LimitsSettings,
    MetricsSettings,
    MfaSettings,
    OaSourceSettings,
    PasswordSettings,
    PolicySettings,
    SamlSettings,
    ServerSettings,
    Settings,
    SyncSettings,
    ThrottleSettings,
    TokenSettings,
    UpstreamOidcSettings,
)
from idhub.config.upstream import upstream_oidc
from idhub.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_NAME",
    "ENV_OVERRIDES",
    "AuditSettings",
    "CasSettings",
    "DatabaseSettings",
    "DefencesSettings",
    "LdapSourceSettings",
    "LimitsSettings",
    "MetricsSettings",
    "MfaSettings",
    "OaSourceSettings",
    "PasswordSettings",
    "PolicySettings",
    "SamlSettings",
    "Secret",
    "ServerSettings",
    "Settings",
    "SyncSettings",
    "ThrottleSettings",
    "TokenSettings",
    "UpstreamOidcSettings",
    "describe",
    "find_config_file",
    "load_settings",
    "production_problem",
    "redact_url",
    "require_production_ready",
]

DEFAULT_CONFIG_NAME = "idhub.toml"


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "database": DatabaseSettings,
    "tokens": TokenSettings,
    "policy": PolicySettings,
    "audit": AuditSettings,
    "sync": SyncSettings,
    "throttle": ThrottleSettings,
    "passwords": PasswordSettings,
    "defences": DefencesSettings,
    "limits": LimitsSettings,
    "cas": CasSettings,
    "mfa": MfaSettings,
    "saml": SamlSettings,
    "metrics": MetricsSettings,
}
_TOP_LEVEL = {"var_dir", "secret_key_file"}

# IDHUB_* variable -> (section or "", field)
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "IDHUB_ISSUER": ("server", "issuer"),
    "IDHUB_HOST": ("server", "host"),
    "IDHUB_PORT": ("server", "port"),
    "IDHUB_WORKERS": ("server", "workers"),
    "IDHUB_TRUSTED_PROXIES": ("server", "trusted_proxies"),
    "IDHUB_DATABASE_URL": ("database", "url"),
    "IDHUB_POLICY_DIR": ("policy", "dir"),
    "IDHUB_VAR_DIR": ("", "var_dir"),
    "IDHUB_SECRET_KEY_FILE": ("", "secret_key_file"),
    "IDHUB_AUDIT_DECISIONS": ("audit", "decisions"),
    "IDHUB_ENV": ("server", "mode"),
    "IDHUB_DEBUG": ("server", "debug"),
    # --- operate: logs and metrics ---
    "IDHUB_LOG_FORMAT": ("server", "log_format"),
    "IDHUB_METRICS_TOKEN": ("metrics", "token"),
    "IDHUB_METRICS_ENABLED": ("metrics", "enabled"),
    # prometheus-client's own variable: set by `idhub serve --workers N` for its workers.
    "PROMETHEUS_MULTIPROC_DIR": ("metrics", "multiprocess_dir"),
}
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("audit", "decisions"): ("all", "sampled", "none"),
    ("tokens", "default_access_token_alg"): ("RS256", "ES256", "EdDSA"),
    ("server", "proxy_header"): ("x-forwarded-for", "forwarded"),
    ("server", "mode"): ("development", "production"),
    ("mfa", "required"): ("all", "policy", "off"),
    ("server", "log_format"): ("text", "json"),
    ("database", "sqlite_synchronous"): ("normal", "full"),
}
# Settings that are URLs a browser or a system is sent to: absolute, with a scheme and a host.
_URLS: frozenset[tuple[str, str]] = frozenset({("server", "issuer")})


def _url_problem(value: str, what: str) -> str | None:
    """Why `value` is not an absolute http(s) URL (RFC 3986) fit to be an issuer, or None."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"{what} is not a valid URL ({exc}): {value!r}"
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            f"{what} must be an absolute URL with a scheme and a host, such as "
            f"https://idhub.example.com or http://127.0.0.1:8000, not {value!r}"
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return f"{what} must not have a query or fragment (OpenID Connect Discovery 3): {value!r}"
    return None


# (section, key) -> inclusive numeric bounds.
_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    # A retry after a lost answer comes within seconds; a long window is a long replay window.
    ("tokens", "refresh_reuse_grace"): (0.0, 60.0),
}


def _build_section(
    cls: type,
    values: Mapping[str, Any],
    *,
    section: str,
    base: Path,
    fail: Callable[[str, str, str | None], ConfigError],
) -> Any:
    types = field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in types:
            known = ", ".join(sorted(types))
            raise fail(f"unknown setting [{section}] {key} (known: {known})", section, key)
        try:
            kwargs[key] = coerce(value, types[key], base=base, what=f"[{section}] {key}")
        except ValueError as exc:
            raise fail(str(exc), section, key) from None
        choices = _CHOICES.get((section, key))
        if choices and kwargs[key] not in choices:
            raise fail(f"[{section}] {key} must be one of {', '.join(choices)}", section, key)
        if (section, key) in _URLS:
            problem = _url_problem(kwargs[key], f"[{section}] {key}")
            if problem is not None:
                raise fail(problem, section, key)
        bounds = _BOUNDS.get((section, key))
        if bounds and not bounds[0] <= kwargs[key] <= bounds[1]:
            low, high = bounds
            raise fail(f"[{section}] {key} must be between {low:g} and {high:g}", section, key)
    instance = cls(**kwargs)
    # Defaults that are relative paths follow the same rule as values from the file.
    for f in fields(cls):
        current = getattr(instance, f.name)
        if f.name not in kwargs and isinstance(current, Path) and not current.is_absolute():
            instance = replace(instance, **{f.name: base / current})
    return instance


def _issuer_from_address(server: ServerSettings) -> ServerSettings:
    """No issuer set: the address idhub listens on, so `IDHUB_PORT=8010` alone gives a server
    whose discovery document and redirects name port 8010 rather than the default 8000."""
    host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return replace(server, issuer=f"http://{host}:{server.port}")


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
    locator = Locator(path, text)
    env_locator = Locator(None, "")

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
        elif name in ("directory", "identity", "upstream"):
            if not isinstance(value, dict):
                raise locator.error(f"[{name}] must be a table", name)
        elif name in _TOP_LEVEL or name == "secret_key":
            continue
        else:
            known = ", ".join(
                sorted([*_SECTIONS, "directory", "identity", "upstream", *_TOP_LEVEL])
            )
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
                top[key] = coerce(doc[key], "Path", base=base, what=key)
            except ValueError as exc:
                raise fail(str(exc), "", key) from None
    var_dir = top.get("var_dir", base / "var")
    secret_key_file = top.get("secret_key_file", var_dir / "secret.key")

    for name, cls in _SECTIONS.items():
        if name not in sections:
            sections[name] = _build_section(cls, {}, section=name, base=base, fail=fail)
    if "issuer" not in doc.get("server", {}):
        sections["server"] = _issuer_from_address(sections["server"])
    database: DatabaseSettings = sections["database"]
    if "url" not in doc.get("database", {}):
        database = replace(database, url=f"sqlite:///{var_dir / 'idhub.db'}")
    sections["database"] = database
    check_defences(sections["server"], sections["throttle"], sections["passwords"], fail=fail)
    check_request_budget(sections["defences"], fail=fail)

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
        throttle=sections["throttle"],
        passwords=sections["passwords"],
        defences=sections["defences"],
        limits=sections["limits"],
        cas=sections["cas"],
        mfa=sections["mfa"],
        saml=sections["saml"],
        metrics=sections["metrics"],
        var_dir=var_dir,
        secret_key_file=secret_key_file,
        secret_key=secret,
        config_file=path,
        directory=doc.get("directory", {}),
        ldap_sources=ldap_sources(doc.get("directory", {}), env=env, base=base, locator=locator),
        scim_sources=scim_sources(doc.get("directory", {}), locator=locator),
        oa_sources=oa_sources(doc.get("directory", {}), env=env, base=base, locator=locator),
        identity=identity_rules(doc, locator=locator),
        upstream_oidc=upstream_oidc(doc.get("upstream", {}), env=env, base=base, locator=locator),
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
