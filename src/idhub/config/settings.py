"""The settings dataclasses: frozen, built once by `load_settings`, passed down explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idhub.config._values import Secret, redact_url
from idhub.core.directory.linking import LinkRules
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
    # Addresses (CIDR) of the reverse proxies whose forwarding header is believed; the client
    # is the right-most address in it that is not one of these (docs/login-and-sessions.md).
    trusted_proxies: tuple[str, ...] = ()
    # The header those proxies set: "x-forwarded-for" or "forwarded" (RFC 7239). Only this
    # one is read, so a client cannot slip in the other one past a proxy that leaves it alone.
    proxy_header: str = "x-forwarded-for"
    # "production" refuses to start on settings that are only fit for a developer's machine
    # (see `production_problem`).
    mode: str = "development"
    debug: bool = False
    # "text" (uvicorn's console lines) or "json": one JSON object a line, with an access
    # record per request (request id, route, status, latency, client id); docs/operations.md.
    log_format: str = "text"


@dataclass(frozen=True)
class LimitsSettings:
    """What one HTTP request may cost before it is refused (docs/deployment.md)."""

    # Bodies of the JSON APIs (`/api/...`): a decision batch of 1000 questions fits.
    max_api_body: int = 2_000_000
    # Every other body: OAuth forms, login and consent posts.
    max_form_body: int = 64 * 1024
    # The request line and all headers together, and the request target alone.
    max_header_bytes: int = 16 * 1024
    max_request_line: int = 8 * 1024
    max_headers: int = 100
    # Seconds a client may take to send a whole request (headers and body); slower or idle
    # partial requests are cut off.
    request_timeout: float = 10.0
    # Seconds an idle keep-alive connection is held open between requests.
    keep_alive_timeout: int = 5


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///var/idhub.db"
    echo: bool = False
    # PostgreSQL: connections each process keeps open once opened, and how many more it may
    # open for a burst and close again when they come back. Opening one costs a few ms of
    # CPU on both sides (psycopg connect, a server backend): with overflow under steady load
    # connections were opened and closed per request, so the default keeps what it opens.
    pool_size: int = 20
    pool_overflow: int = 0
    # --- outage: timeouts so a stalled or unreachable database is a fast 503 (seconds) ---
    # Opening a PostgreSQL connection (libpq counts whole seconds, at least 2).
    connect_timeout: float = 2.0
    # One statement: PostgreSQL cancels it past this, and idhub stops waiting for the answer
    # shortly after, which is what catches a server that is stalled and cancels nothing.
    # 0 disables both (migrations always run without it).
    statement_timeout: float = 1.5
    # Waiting for a free pooled connection when every one is busy.
    pool_timeout: float = 1.0
    # SQLite: how long a writer waits for another process's write lock.
    busy_timeout: float = 5.0
    # SQLite in WAL mode: "normal" makes every commit durable against a crash of the process
    # (the WAL is written before COMMIT returns) and leaves the fsync to the checkpoint, so
    # an operating-system crash or power loss can lose the last commits; "full" fsyncs the
    # WAL at every commit (a few ms each on a virtual disk). See docs/deployment.md.
    sqlite_synchronous: str = "normal"
    # |this replica's clock - the database server's clock| past which /readyz warns.
    clock_offset_warning: float = 2.0

    def __repr__(self) -> str:
        return (
            f"DatabaseSettings(url={redact_url(self.url)!r}, echo={self.echo}, "
            f"pool_size={self.pool_size}, pool_overflow={self.pool_overflow})"
        )


@dataclass(frozen=True)
class TokenSettings:
    access_token_ttl: int = 600
    id_token_ttl: int = 600
    refresh_token_ttl: int = 30 * 24 * 3600
    code_ttl: int = 60
    session_ttl: int = 10 * 3600
    # Seconds after a rotation in which the superseded refresh token, presented again by its
    # client, gets the same successor back instead of revoking the family (0: never).
    refresh_reuse_grace: float = 5.0
    default_access_token_alg: str = "ES256"  # noqa: S105 - an algorithm name
    # Seconds a token's `iat`/`nbf` may lie in this replica's future (another replica's clock
    # running ahead) and still be accepted.
    clock_skew: int = 10


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
class ThrottleSettings:
    """`[throttle]`: failures allowed without delay (`*_free`), failures that lock (`*_limit`)
    and how long the lock lasts (`*_lock`, seconds), per source address and per account at
    sign-in and per client id and per address at client authentication."""

    window: int = 900
    delay_max: int = 60
    ip_free: int = 10
    ip_limit: int = 30
    ip_lock: int = 900
    account_free: int = 5
    account_limit: int = 5
    account_lock: int = 900
    client_free: int = 3
    client_limit: int = 10
    client_lock: int = 900
    client_ip_free: int = 5
    client_ip_limit: int = 20
    client_ip_lock: int = 900


@dataclass(frozen=True)
class DefencesSettings:
    """`[defences]`: how many writes a request without a session may cause per source address
    (IPv6 by /64) and window (core/request_budget.py): upstream sign-in starts and callbacks,
    passkey options and passwordless sign-ins (refused over it), and the failure events of
    refused sign-ins, clients, `/token` requests, CAS tickets and SAML requests (left out over
    it, counted in `audit.suppressed`), each kind counted on its own, in each worker process."""

    anonymous_writes: int = 30
    anonymous_window: int = 60
    # Addresses remembered at once (an LRU); bounds the memory a flood of addresses can take.
    anonymous_sources: int = 10_000


@dataclass(frozen=True)
class PasswordSettings:
    """`[passwords]`: the policy for local passwords and the argon2id parameters."""

    min_length: int = 8
    history: int = 5
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_parallelism: int = 1


@dataclass(frozen=True)
class CasSettings:
    """`[cas]`: the CAS server front (see docs/cas.md)."""

    # Seconds a service or proxy ticket may wait to be validated (CAS 3.0 suggests 10 s).
    ticket_ttl: int = 10
    # Whether services that took part in a session receive the CAS logoutRequest when it ends.
    single_logout: bool = True


@dataclass(frozen=True)
class MfaSettings:
    # "all": everyone; "policy": per person (admin flag), per role (policies/mfa.yaml) and per
    # system (`require_mfa`); "off": only people who enrolled, systems and step-up requests.
    required: str = "policy"
    remember_device_days: float = 30.0
    # The name authenticator apps show next to the code.
    totp_issuer: str = "idhub"


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
class MetricsSettings:
    """`[metrics]`: the Prometheus endpoint `/metrics` (docs/operations.md)."""

    enabled: bool = True
    # When set, `/metrics` answers only `Authorization: Bearer <token>` (IDHUB_METRICS_TOKEN).
    token: Secret | None = None
    # Where worker processes keep their values; `idhub serve --workers N` sets it (through
    # prometheus-client's PROMETHEUS_MULTIPROC_DIR) to an emptied VAR/metrics.
    multiprocess_dir: Path | None = None

    def __repr__(self) -> str:
        token = "**********" if self.token else None
        return (
            f"MetricsSettings(enabled={self.enabled}, token={token!r}, "
            f"multiprocess_dir={self.multiprocess_dir!r})"
        )


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
class ScimSourceSettings:
    """One `[directory.scim.<name>]` table (docs/scim.md)."""

    name: str
    token_sha256: str  # hex SHA-256 of the source's bearer token; the token is never stored

    @property
    def source(self) -> str:
        return f"scim:{self.name}"


@dataclass(frozen=True)
class OaSourceSettings:
    """One `[directory.dingtalk.<name>]` or `[directory.wecom.<name>]` table (docs/directory.md)."""

    kind: str  # "dingtalk" or "wecom"
    name: str
    base_url: str
    client_id: str  # DingTalk appkey / WeCom corpid
    client_secret: Secret
    root_department: int = 1
    page_size: int = 100
    timeout: float = 10.0
    # Transient failures (gateway 5xx, "system busy") retried this many times per call.
    retries: int = 4
    # First back-off step in seconds (doubled each time); rate limits wait at most
    # `rate_limit_wait` seconds in all per call before the run gives up.
    retry_base: float = 1.0
    rate_limit_wait: float = 120.0
    max_disable_ratio: float | None = None
    batch_size: int = 1000
    # WeCom: "user_list" (members per department) or "list_id" (user/list_id by cursor, then
    # user/get per member: what apps may call since 2022 where user/list is closed to them).
    member_listing: str = "user_list"
    # Sign-in with the platform's app (docs/upstream.md): the "钉钉扫码登录" / "企业微信登录"
    # button. `login_url` is the platform's login page host (DingTalk login.dingtalk.com,
    # WeCom login.work.weixin.qq.com), `api_url` DingTalk's new API host (api.dingtalk.com),
    # `app_login_url` WeCom's in-app OAuth host (open.weixin.qq.com); WeCom needs `agent_id`,
    # and `agent_secret` when the sync's corp_secret is not the sign-in app's own.
    sign_in: bool = False
    login_url: str | None = None
    api_url: str | None = None
    app_login_url: str | None = None
    agent_id: str | None = None
    agent_secret: Secret | None = None

    @property
    def source(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class UpstreamOidcSettings:
    """One `[upstream.<name>]` table of kind "oidc": another OpenID Connect provider people may
    sign in through (docs/upstream.md). The client secret comes from the environment or a file."""

    name: str
    issuer: str
    client_id: str
    client_secret: Secret
    label: str = ""
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    # Which idhub attribute ("email", "username", "employee_number") the upstream `claim` names.
    match: str = "email"
    claim: str = "email"
    require_email_verified: bool = False
    # ID-token signature algorithms accepted (asymmetric only; never "none").
    allowed_algs: tuple[str, ...] = ("RS256",)
    userinfo: bool = False
    token_auth_method: str = "client_secret_basic"  # noqa: S105 - a method's name
    timeout: float = 10.0
    clock_skew: float = 60.0
    discovery_ttl: float = 3600.0
    # PEM file of the CA that issued the provider's TLS certificate (default: certifi's).
    ca_file: Path | None = None


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    passwords: PasswordSettings = field(default_factory=PasswordSettings)
    defences: DefencesSettings = field(default_factory=DefencesSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    cas: CasSettings = field(default_factory=CasSettings)
    mfa: MfaSettings = field(default_factory=MfaSettings)
    saml: SamlSettings = field(default_factory=SamlSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    var_dir: Path = Path("var")
    secret_key_file: Path = Path("var/secret.key")
    secret_key: Secret | None = None
    config_file: Path | None = None
    # Raw `[directory.*]` tables; the LDAP/OA source settings are parsed from these.
    directory: Mapping[str, Any] = field(default_factory=dict)
    # `[directory.ldap.<name>]` parsed and checked (name -> settings).
    ldap_sources: Mapping[str, LdapSourceSettings] = field(default_factory=dict)
    # `[directory.scim.<name>]` parsed and checked (name -> settings).
    scim_sources: Mapping[str, ScimSourceSettings] = field(default_factory=dict)
    # `[directory.dingtalk.<name>]` / `[directory.wecom.<name>]`, keyed "dingtalk:<name>".
    oa_sources: Mapping[str, OaSourceSettings] = field(default_factory=dict)
    # `[identity]` and `[identity.precedence]`: one identity per person (config/identity.py).
    identity: LinkRules = field(default_factory=LinkRules)
    # `[upstream.<name>]` tables of kind "oidc" parsed and checked (name -> settings).
    upstream_oidc: Mapping[str, UpstreamOidcSettings] = field(default_factory=dict)

    def require_secret_key(self) -> Secret:
        if self.secret_key is None or not self.secret_key:
            raise ConfigError(
                "no secret key is configured",
                hint=f"run `idhub init` to create {self.secret_key_file} or set IDHUB_SECRET_KEY",
            )
        return self.secret_key

    @property
    def production(self) -> bool:
        return self.server.mode == "production"
