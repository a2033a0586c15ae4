"""The database tables (SQLAlchemy Core). Alembic migrations in `idhub/migrations` create them.

Secrets never sit here in clear: client secrets and refresh tokens are stored as keyed
hashes, authorization codes and session ids as SHA-256 digests, private keys encrypted.
Times are UTC epoch seconds (float) so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# ---------------------------------------------------------------- directory

departments = Table(
    "departments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("parent_id", Integer, ForeignKey("departments.id"), nullable=True),
    # Full path from the root, e.g. "/总部/财务部"; unique, what policies and tokens name.
    Column("path", String(1000), nullable=False, unique=True),
    Column("source", String(100), nullable=False, default="local"),
    Column("external_id", String(200), nullable=True),
    Column("manager_user_id", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Order among siblings as the source gives it (DingTalk / WeCom `order`); NULL: none.
    Column("sort_order", Integer, nullable=True),
)
Index("ix_departments_parent", departments.c.parent_id)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    # Stable, opaque, never reused: the OIDC `sub`.
    Column("sub", String(64), nullable=False, unique=True),
    Column("username", String(200), nullable=False, unique=True),
    Column("display_name", String(200), nullable=False, default=""),
    Column("email", String(320), nullable=True),
    Column("phone", String(64), nullable=True),
    Column("employee_id", String(64), nullable=True),
    Column("department_id", Integer, ForeignKey("departments.id"), nullable=True),
    # "local", "ldap:<name>", "scim", "dingtalk:<name>", ...
    Column("source", String(100), nullable=False, default="local"),
    Column("external_id", String(200), nullable=True),
    Column("dn", String(1000), nullable=True),
    Column("password_hash", String(300), nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("disabled_reason", String(200), nullable=True),
    Column("disabled_at", Float, nullable=True),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Float, nullable=True),
    Column("attributes", JSON, nullable=False, default=dict),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("source", "external_id", name="uq_users_source_external_id"),
)
Index("ix_users_department", users.c.department_id)
# The link keys a SCIM request looks a person up by, one at a time (core/directory/linking.py;
# a sync reads them all at once instead).
Index("ix_users_employee_id", users.c.employee_id)
Index("ix_users_email_lower", func.lower(users.c.email))
# What `users_matching` narrows by (an upstream sign-in's account lookup): without these the
# lookup scans every user, since lower(trim(x)) cannot use an index on x or lower(x).
Index("ix_users_username_folded", func.lower(func.trim(users.c.username)))
Index("ix_users_email_folded", func.lower(func.trim(users.c.email)))
Index("ix_users_employee_id_folded", func.lower(func.trim(users.c.employee_id)))
Index("ix_users_phone", users.c.phone)

# One identity per person (core/directory/linking.py): every (source, external id) that
# describes an idhub user. users.source / external_id stay the creating link.
user_links = Table(
    "user_links",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("source", String(100), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("linked_at", Float, nullable=False),
    # "created" (the source made the user), "sync:<source>", "scim:<source>", "admin:<name>"
    Column("linked_by", String(200), nullable=False),
    # The link key that matched ("employee_number", "email", "mobile"), and a hash of the
    # canonical value (not the value: no second copy of personal data); NULL for "created".
    Column("key", String(50), nullable=True),
    Column("value_hash", String(64), nullable=True),
    # What this source last said about the person (display_name, email, ..., dn), so
    # precedence can tell which ranked source provides a value. NULL: the users row (a
    # person only one source describes, the common case, costs nothing extra).
    Column("attrs", JSON, nullable=True),
    UniqueConstraint("source", "external_id", name="uq_user_links_source_external_id"),
)
Index("ix_user_links_user", user_links.c.user_id)

# People a source presented that matched more than one idhub user (or one already linked to
# another person of that source): neither created nor linked until an admin decides.
identity_conflicts = Table(
    "identity_conflicts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source", String(100), nullable=False),
    Column("external_id", String(200), nullable=False),
    Column("username", String(200), nullable=True),
    Column("key", String(50), nullable=False),
    Column("reason", String(300), nullable=False, default=""),
    Column("candidates", JSON, nullable=False, default=list),  # idhub user ids
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
    Column("resolved_by", String(200), nullable=True),
)
Index("ix_identity_conflicts_source", identity_conflicts.c.source, identity_conflicts.c.external_id)
Index("ix_identity_conflicts_username", identity_conflicts.c.source, identity_conflicts.c.username)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("source", String(100), nullable=False, default="local"),
    Column("external_id", String(200), nullable=True),
    Column("dn", String(1000), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # The SCIM document of a group a SCIM source owns (migration 0013); NULL for the others.
    Column("attributes", JSON, nullable=True),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)
Index("ix_group_members_user", group_members.c.user_id)

# ---------------------------------------------------------------- clients

clients = Table(
    "clients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("client_id", String(100), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    # HMAC-SHA-256 of the secret under a key derived from the server secret; never the secret.
    Column("secret_hash", String(128), nullable=True),
    Column("secret_rotated_at", Float, nullable=True),
    Column("public", Boolean, nullable=False, default=False),
    Column("first_party", Boolean, nullable=False, default=False),
    Column("token_endpoint_auth_method", String(40), nullable=False),
    Column("redirect_uris", JSON, nullable=False, default=list),
    Column("post_logout_redirect_uris", JSON, nullable=False, default=list),
    Column("grant_types", JSON, nullable=False, default=list),
    Column("response_types", JSON, nullable=False, default=list),
    Column("scope", String(1000), nullable=False, default="openid"),
    Column("jwks", JSON, nullable=True),
    Column("jwks_uri", String(1000), nullable=True),
    Column("id_token_signed_response_alg", String(20), nullable=False, default="RS256"),
    Column("access_token_signed_response_alg", String(20), nullable=False, default="ES256"),
    # The resource system this client's tokens are for when it names none (RFC 8707).
    Column("default_audience", String(200), nullable=True),
    Column("allowed_audiences", JSON, nullable=False, default=list),
    Column("backchannel_logout_uri", String(1000), nullable=True),
    Column("backchannel_logout_session_required", Boolean, nullable=False, default=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # Every person signing in to this system presents a second factor.
    Column("require_mfa", Boolean, nullable=False, default=False, server_default="0"),
)

consents = Table(
    "consents",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("client_id", String(100), primary_key=True),
    Column("scope", String(1000), nullable=False),
    Column("granted_at", Float, nullable=False),
)

# ---------------------------------------------------------------- keys

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(20), nullable=False),
    Column("public_jwk", JSON, nullable=False),
    # AES-GCM under a key derived from IDHUB_SECRET_KEY.
    Column("private_enc", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("activated_at", Float, nullable=True),
    # After retirement the key signs nothing new but stays in JWKS until `expires_at`.
    Column("retired_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
)

# ---------------------------------------------------------------- sessions and tokens

sso_sessions = Table(
    "sso_sessions",
    metadata,
    # SHA-256 of the random cookie value.
    Column("id_hash", String(64), primary_key=True),
    # The public session id put in ID tokens and logout tokens.
    Column("sid", String(64), nullable=False, unique=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("auth_time", Float, nullable=False),
    Column("amr", JSON, nullable=False, default=list),
    Column("acr", String(100), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("ended_at", Float, nullable=True),
    Column("end_reason", String(100), nullable=True),
    Column("ip", String(64), nullable=True),
    Column("user_agent", String(500), nullable=True),
)
Index("ix_sso_sessions_user", sso_sessions.c.user_id)

session_clients = Table(
    "session_clients",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("client_id", String(100), primary_key=True),
    Column("first_at", Float, nullable=False),
    # How the system signed in ("oidc", "cas", "saml", ...): decides how it is told of a logout.
    Column("protocol", String(16), nullable=False, server_default="oidc"),
)

authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(100), nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("redirect_uri", String(1000), nullable=False),
    Column("scope", String(1000), nullable=False),
    Column("nonce", String(500), nullable=True),
    Column("code_challenge", String(200), nullable=True),
    Column("code_challenge_method", String(10), nullable=True),
    Column("resource", String(1000), nullable=True),
    Column("sid", String(64), nullable=True),
    Column("auth_time", Float, nullable=False),
    Column("acr", String(100), nullable=True),
    Column("amr", JSON, nullable=False, default=list),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
)

refresh_families = Table(
    "refresh_families",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("client_id", String(100), nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("sid", String(64), nullable=True),
    Column("scope", String(1000), nullable=False),
    Column("audience", String(200), nullable=True),
    Column("auth_time", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("revoked_reason", String(100), nullable=True),
)
Index("ix_refresh_families_sid", refresh_families.c.sid)
Index("ix_refresh_families_user", refresh_families.c.user_id)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    # Keyed hash of the token value.
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", String(64), ForeignKey("refresh_families.id"), nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    # Set when the token was exchanged for a newer one; any later use is reuse (but see
    # `[tokens] refresh_reuse_grace`).
    Column("rotated_at", Float, nullable=True),
    # The token it was exchanged for: keyed hash, and the value sealed (AES-GCM) so a retry
    # within the grace window gets the same successor back (migration 0009).
    Column("successor_hash", String(64), nullable=True),
    Column("successor_sealed", LargeBinary, nullable=True),
)
Index("ix_refresh_tokens_family", refresh_tokens.c.family_id)

revoked_tokens = Table(
    "revoked_tokens",
    metadata,
    # `jti` of a revoked access token; kept until the token would have expired anyway.
    Column("jti", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=False),
)

# The access tokens (by `jti`) each grant produced, so reusing its authorization code can revoke
# them (RFC 6749 4.1.2); the grant id is the family id, the code's hash. Kept until expiry.
grant_access_tokens = Table(
    "grant_access_tokens",
    metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("jti", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)

# Replay protection for private_key_jwt client assertions (RFC 7523 `jti`).
used_assertions = Table(
    "used_assertions",
    metadata,
    Column("client_id", String(100), primary_key=True),
    Column("jti", String(200), primary_key=True),
    Column("expires_at", Float, nullable=False),
)

logout_deliveries = Table(
    "logout_deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("client_id", String(100), nullable=False),
    Column("sid", String(64), nullable=True),
    Column("user_sub", String(64), nullable=False),
    Column("uri", String(1000), nullable=False),
    Column("status", String(20), nullable=False),  # pending / delivered / failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", String(500), nullable=True),
    Column("next_attempt_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    # Which protocol's message the delivery carries ("oidc" logout token, "cas" logoutRequest
    # ...), and that protocol's own reference for building it (e.g. the CAS ticket it names).
    Column("protocol", String(16), nullable=False, server_default="oidc"),
    Column("ref", String(100), nullable=True),
)
Index("ix_logout_deliveries_status", logout_deliveries.c.status)

# ---------------------------------------------------------------- CAS

cas_services = Table(
    "cas_services",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("display_name", String(200), nullable=False, default=""),
    # Service URL patterns (see idhub/cas/services.py for the matching rules).
    Column("urls", JSON, nullable=False, default=list),
    Column("domain", String(100), nullable=False),
    Column("attributes", JSON, nullable=False, default=list),
    Column("first_party", Boolean, nullable=False, default=False),
    Column("proxy_callbacks", JSON, nullable=False, default=list),
    Column("single_logout", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
    # A second factor for everyone signing in to it, like an OIDC client's (migration 0011).
    Column("require_mfa", Boolean, nullable=False, default=False, server_default="0"),
)

cas_tickets = Table(
    "cas_tickets",
    metadata,
    # SHA-256 of the ticket: a copy of the database cannot be replayed as tickets.
    Column("ticket_hash", String(64), primary_key=True),
    Column("kind", String(4), nullable=False),  # ST / PT / PGT
    Column("service_name", String(100), nullable=False),
    Column("service_url", String(2000), nullable=False),
    Column("sid", String(64), nullable=True),
    Column("user_id", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("consumed_at", Float, nullable=True),
    Column("from_new_login", Boolean, nullable=False, default=False),
    # PT: the PGT it was granted from; PGT: the ticket whose validation granted it.
    Column("parent_hash", String(64), nullable=True),
    Column("proxies", JSON, nullable=False, default=list),
    # ST only, encrypted: the single-logout request names the ticket the service received.
    Column("sealed", LargeBinary, nullable=True),
)
Index("ix_cas_tickets_sid", cas_tickets.c.sid)
Index("ix_cas_tickets_created_at", cas_tickets.c.created_at)

# ---------------------------------------------------------------- audit

audit_events = Table(
    "audit_events",
    metadata,
    # Position in the chain; assigned under the append lock, gap-free.
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("ts", Float, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("actor_type", String(20), nullable=False),
    Column("actor_id", String(300), nullable=True),
    Column("target", String(500), nullable=True),
    Column("outcome", String(20), nullable=False),
    Column("client_ip", String(64), nullable=True),
    Column("user_agent", String(500), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_events_ts", audit_events.c.ts)
Index("ix_audit_events_type", audit_events.c.event_type)

audit_anchor = Table(
    "audit_anchor",
    metadata,
    # One row: where the live chain starts after an archive moved older events out.
    Column("id", Integer, primary_key=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("archived_at", Float, nullable=True),
    Column("archive_file", String(1000), nullable=True),
)

# ---------------------------------------------------------------- sync

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("source", String(100), nullable=False),
    Column("mode", String(20), nullable=False),  # full / incremental
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("status", String(20), nullable=False),  # running / succeeded / failed / aborted
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("counts", JSON, nullable=False, default=dict),
    Column("error", Text, nullable=True),
)
Index("ix_sync_runs_source", sync_runs.c.source, sync_runs.c.started_at)

sync_state = Table(
    "sync_state",
    metadata,
    Column("source", String(100), primary_key=True),
    Column("high_water", String(100), nullable=True),
    Column("last_full_at", Float, nullable=True),
    Column("last_incremental_at", Float, nullable=True),
    # A lease so two replicas never sync the same source at once.
    Column("lock_owner", String(100), nullable=True),
    Column("lock_expires_at", Float, nullable=True),
)

# ---------------------------------------------------------------- policy

policy_state = Table(
    "policy_state",
    metadata,
    # One row per replica-visible policy version; replicas compare `version` to reload.
    Column("id", Integer, primary_key=True),
    Column("version", String(64), nullable=False),
    Column("loaded_at", Float, nullable=False),
    Column("file_hashes", JSON, nullable=False, default=dict),
    Column("directory_version", BigInteger, nullable=False, default=0),
)

# A monotonically increasing counter bumped by every directory change the policy depends on
# (group membership, department, manager), so replicas know when derived roles moved.
change_counters = Table(
    "change_counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# ---------------------------------------------------------------- sign-in defences

# Failure counters of the throttle (core/throttle.py): one row per key, shared by replicas.
throttle_counters = Table(
    "throttle_counters",
    metadata,
    # "ip", "account", "client", "client_ip"
    Column("kind", String(16), primary_key=True),
    # An address, "user:<id>", "name:<keyed fingerprint>" or "<client_id>@<address>".
    Column("value", String(300), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_failed_at", Float, nullable=False),
    Column("last_failed_at", Float, nullable=False),
    Column("locked_until", Float, nullable=True),
)
Index("ix_throttle_counters_last_failed_at", throttle_counters.c.last_failed_at)

# Earlier password hashes of local users, so a password is not set again too soon.
password_history = Table(
    "password_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("password_hash", String(300), nullable=False),
    Column("created_at", Float, nullable=False),
)
Index("ix_password_history_user_id", password_history.c.user_id)

# ---------------------------------------------------------------- second factors

mfa_accounts = Table(
    "mfa_accounts",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    # Set by an admin: this person must use a second factor wherever they sign in.
    Column("required", Boolean, nullable=False, default=False),
    # AES-GCM under a key derived from IDHUB_SECRET_KEY, bound to the user id.
    Column("totp_secret_enc", LargeBinary, nullable=True),
    # NULL while an enrolment waits for its first code.
    Column("totp_confirmed_at", Float, nullable=True),
    # The last time step a code was accepted for: a code is never accepted twice.
    Column("totp_last_step", BigInteger, nullable=True),
    # Wrong second factors in a row; at the limit the second factor is refused for a while.
    Column("failed_attempts", Integer, nullable=False, default=0),
    Column("blocked_until", Float, nullable=True),
    Column("updated_at", Float, nullable=False),
)

mfa_recovery_codes = Table(
    "mfa_recovery_codes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # Keyed hash of the code; never the code.
    Column("code_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
    UniqueConstraint("user_id", "code_hash", name="uq_mfa_recovery_codes_user_code"),
)

mfa_passkeys = Table(
    "mfa_passkeys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # base64url of the credential id the authenticator chose.
    Column("credential_id", String(1400), nullable=False, unique=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("sign_count", BigInteger, nullable=False, default=0),
    Column("name", String(100), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
)
Index("ix_mfa_passkeys_user", mfa_passkeys.c.user_id)

mfa_challenges = Table(
    "mfa_challenges",
    metadata,
    # SHA-256 of the handle the browser holds; the row is deleted when it is used.
    Column("handle_hash", String(64), primary_key=True),
    Column("purpose", String(20), nullable=False),
    Column("user_id", Integer, nullable=True),
    Column("challenge", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
)

mfa_devices = Table(
    "mfa_devices",
    metadata,
    # The public id named in the signed cookie and on the account page.
    Column("id", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("user_agent", String(500), nullable=True),
    Column("ip", String(64), nullable=True),
)
Index("ix_mfa_devices_user", mfa_devices.c.user_id)

# ---------------------------------------------------------------- saml

# Service providers registered from their metadata; `name` is the system's id (participant and
# consent key), `domain` its policy domain, `entity_id` the audience of its assertions.
saml_service_providers = Table(
    "saml_service_providers",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("entity_id", String(500), nullable=False, unique=True),
    Column("domain", String(100), nullable=False),
    Column("metadata_xml", Text, nullable=False),
    Column("name_id_format", String(20), nullable=False),
    Column("legacy_sha1", Boolean, nullable=False, default=False),
    Column("require_signed_requests", Boolean, nullable=False, default=False),
    # First-party SPs (the company's own systems) are not asked consent for.
    Column("first_party", Boolean, nullable=False, default=False),
    # Attribute names released (comma-separated friendly names); empty means all of them.
    Column("attributes", String(500), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # A second factor for everyone signing in to it, like an OIDC client's (migration 0011).
    Column("require_mfa", Boolean, nullable=False, default=False, server_default="0"),
)

# The self-signed certificate wrapped around each RS256 signing key that signed SAML messages
# (public data: it is published in the IdP metadata while the key is).
saml_certificates = Table(
    "saml_certificates",
    metadata,
    Column("kid", String(100), primary_key=True),
    Column("certificate_pem", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Message ids seen once (AuthnRequest ids from SPs, assertion ids issued), kept until they
# could no longer be accepted anyway, so a replay is refused on every replica.
saml_message_ids = Table(
    "saml_message_ids",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("expires_at", Float, nullable=False),
)
Index("ix_saml_message_ids_expires_at", saml_message_ids.c.expires_at)

# ---------------------------------------------------------------- upstream sign-in

# Browsers sent to an upstream provider (DingTalk, WeCom, OIDC) and not back yet, keyed by a
# keyed hash of the `state` (core/upstream_flow.py); a row is deleted when it is used.
upstream_states = Table(
    "upstream_states",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("provider", String(100), nullable=False),
    Column("return_to", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
Index("ix_upstream_states_expires_at", upstream_states.c.expires_at)
