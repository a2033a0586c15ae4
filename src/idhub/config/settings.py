"""The settings dataclasses: frozen, built once by `load_settings`, passed down explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idhub.config._values import Secret, redact_url
from idhub.core.directory.mapping import AttributeMap
from idhub.errors import ConfigError


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
    domains: tuple[str, ...] = ("oa", "reimburse", "erp", "archive", "idhub")
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
class SamlSettings:
    """`[saml]`: the SAML 2.0 identity provider (docs/saml.md)."""

    # Empty: `<issuer>/saml/metadata`, the metadata URL itself (the usual choice).
    entity_id: str = ""
    # Seconds an assertion is valid (NotOnOrAfter); capped at 300.
    assertion_ttl: int = 300
    # Seconds an AuthnRequest's IssueInstant may be old (or ahead, for clock skew).
    request_max_age: int = 300
    # Refuse AuthnRequests without a valid signature from every SP, not only from SPs whose
    # metadata says AuthnRequestsSigned="true".
    require_signed_requests: bool = False
    # Days the self-signed certificate around the signing key is valid.
    certificate_days: int = 3650

    def entity_id_for(self, issuer: str) -> str:
        return self.entity_id or issuer.rstrip("/") + "/saml/metadata"


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
    saml: SamlSettings = field(default_factory=SamlSettings)
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
