"""`[upstream.<name>]` tables: providers people may sign in through. This module reads those of
kind "oidc" (another OpenID Connect provider: a parent company's IdP, Azure AD, another idhub);
every key is checked, and the client secret is read from the named environment variable or
file, never from the config file itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from idhub.config._values import Locator, Secret, coerce, field_types
from idhub.config.settings import UpstreamOidcSettings

# Kinds whose tables another reader checks (the OA platforms' sign-in): skipped here so that
# one `[upstream]` table can hold them all.
OTHER_KINDS = ("dingtalk", "wecom")
MATCHES = ("email", "username", "employee_number")
# Asymmetric signatures only: "none" proves nothing, and an HMAC keyed with the client secret
# would let anyone who holds that secret (every replica, every admin) mint ID tokens.
ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,50}")
_SPECIAL = {"kind", "client_secret_env", "client_secret_file"}
_POSITIVE = ("timeout", "discovery_ttl")


def upstream_oidc(
    tables: Any, *, env: Mapping[str, str], base: Path, locator: Locator
) -> dict[str, UpstreamOidcSettings]:
    """The `[upstream.<name>]` tables of kind "oidc" (the default kind), checked."""
    if not isinstance(tables, dict):
        raise locator.error("[upstream] must be a table of named providers", "upstream")
    out: dict[str, UpstreamOidcSettings] = {}
    for name, table in tables.items():
        section = f"upstream.{name}"
        if not isinstance(table, dict):
            raise locator.error(f"[{section}] must be a table", section)
        if not _NAME.fullmatch(name):
            raise locator.error(
                f"upstream name {name!r} may use letters, digits, _ and - only", section
            )
        kind = table.get("kind", "oidc")
        if kind in OTHER_KINDS:
            continue
        if kind != "oidc":
            choices = ", ".join(("oidc", *OTHER_KINDS))
            raise locator.error(f"[{section}] kind must be one of {choices}", section, "kind")
        out[name] = _provider(name, table, env=env, base=base, locator=locator)
    return out


def _provider(
    name: str, table: Mapping[str, Any], *, env: Mapping[str, str], base: Path, locator: Locator
) -> UpstreamOidcSettings:
    section = f"upstream.{name}"
    types = field_types(UpstreamOidcSettings)
    settable = set(types) - {"name", "client_secret"}
    kwargs: dict[str, Any] = {"name": name}
    for key, value in table.items():
        if key in _SPECIAL:
            continue
        if key == "client_secret":
            raise locator.error(
                f"[{section}] client_secret must not be written in the config file; use "
                "client_secret_env (an environment variable's name) or client_secret_file",
                section,
                key,
            )
        if key not in settable:
            known = ", ".join(sorted(settable | _SPECIAL))
            raise locator.error(f"unknown setting [{section}] {key} (known: {known})", section, key)
        try:
            kwargs[key] = coerce(value, str(types[key]), base=base, what=f"[{section}] {key}")
        except ValueError as exc:
            raise locator.error(str(exc), section, key) from None
    for key in ("issuer", "client_id"):
        if not kwargs.get(key):
            raise locator.error(f"[{section}] needs {key}", section)
    _check(section, kwargs, locator)
    kwargs.setdefault("label", name)
    kwargs["client_secret"] = _secret(table, section, env=env, base=base, locator=locator)
    return UpstreamOidcSettings(**kwargs)


def _check(section: str, kwargs: dict[str, Any], locator: Locator) -> None:
    issuer = str(kwargs["issuer"])
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise locator.error(
            f"[{section}] issuer must be an https:// (or, on a test bench, http://) URL without "
            "query or fragment, spelled exactly as the provider's discovery document spells it",
            section,
            "issuer",
        )
    if kwargs.get("match", "email") not in MATCHES:
        raise locator.error(
            f"[{section}] match must be one of {', '.join(MATCHES)}", section, "match"
        )
    if "claim" in kwargs and not str(kwargs["claim"]).strip():
        raise locator.error(f"[{section}] claim must name an upstream claim", section, "claim")
    algs = kwargs.get("allowed_algs", ("RS256",))
    bad = [alg for alg in algs if alg not in ALGS]
    if bad or not algs:
        refused = "none is never accepted; " if any(a.lower() == "none" for a in bad) else ""
        raise locator.error(
            f"[{section}] allowed_algs: {refused}choose from {', '.join(ALGS)}",
            section,
            "allowed_algs",
        )
    scopes = kwargs.get("scopes", ("openid",))
    if "openid" not in scopes:
        raise locator.error(f"[{section}] scopes must include openid", section, "scopes")
    method = kwargs.get("token_auth_method", TOKEN_AUTH_METHODS[0])
    if method not in TOKEN_AUTH_METHODS:
        raise locator.error(
            f"[{section}] token_auth_method must be {' or '.join(TOKEN_AUTH_METHODS)}",
            section,
            "token_auth_method",
        )
    for key in _POSITIVE:
        if key in kwargs and kwargs[key] <= 0:
            raise locator.error(f"[{section}] {key} must be positive", section, key)
    if kwargs.get("clock_skew", 0) < 0:
        raise locator.error(f"[{section}] clock_skew must not be negative", section, "clock_skew")
    ca_file = kwargs.get("ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        raise locator.error(f"[{section}] ca_file {ca_file} does not exist", section, "ca_file")


def _secret(
    table: Mapping[str, Any], section: str, *, env: Mapping[str, str], base: Path, locator: Locator
) -> Secret:
    variable = table.get("client_secret_env")
    file = table.get("client_secret_file")
    if variable and file:
        raise locator.error(
            f"[{section}] set client_secret_env or client_secret_file, not both",
            section,
            "client_secret_file",
        )
    if variable:
        if not isinstance(variable, str) or not env.get(variable):
            raise locator.error(
                f"[{section}] client_secret_env names {variable!r}, which is not set",
                section,
                "client_secret_env",
            )
        return Secret(env[variable])
    if file:
        path = Path(str(file)).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise locator.error(
                f"[{section}] cannot read client_secret_file: {exc.strerror or exc}",
                section,
                "client_secret_file",
            ) from None
        if value:
            return Secret(value)
        raise locator.error(
            f"[{section}] client_secret_file {str(path)!r} is empty", section, "client_secret_file"
        )
    raise locator.error(f"[{section}] needs client_secret_env or client_secret_file", section)
