"""second factors: TOTP, recovery codes, passkeys, WebAuthn challenges, remembered devices,
and the per-system `require_mfa` setting

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
    )


def upgrade() -> None:
    with op.batch_alter_table("clients") as batch:
        batch.add_column(sa.Column("require_mfa", sa.Boolean(), nullable=False, server_default="0"))
    op.create_table(
        "mfa_accounts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("required", sa.Boolean(), nullable=False),
        sa.Column("totp_secret_enc", sa.LargeBinary(), nullable=True),
        sa.Column("totp_confirmed_at", sa.Float(), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("blocked_until", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        _user_fk("mfa_accounts"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_mfa_accounts")),
    )
    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        _user_fk("mfa_recovery_codes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_recovery_codes")),
        sa.UniqueConstraint("user_id", "code_hash", name="uq_mfa_recovery_codes_user_code"),
    )
    op.create_table(
        "mfa_passkeys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.String(length=1400), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        _user_fk("mfa_passkeys"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_passkeys")),
        sa.UniqueConstraint("credential_id", name=op.f("uq_mfa_passkeys_credential_id")),
    )
    op.create_index("ix_mfa_passkeys_user", "mfa_passkeys", ["user_id"])
    op.create_table(
        "mfa_challenges",
        sa.Column("handle_hash", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("challenge", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("handle_hash", name=op.f("pk_mfa_challenges")),
    )
    op.create_table(
        "mfa_devices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("user_agent", sa.String(length=500), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        _user_fk("mfa_devices"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_devices")),
    )
    op.create_index("ix_mfa_devices_user", "mfa_devices", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_mfa_devices_user", table_name="mfa_devices")
    op.drop_table("mfa_devices")
    op.drop_table("mfa_challenges")
    op.drop_index("ix_mfa_passkeys_user", table_name="mfa_passkeys")
    op.drop_table("mfa_passkeys")
    op.drop_table("mfa_recovery_codes")
    op.drop_table("mfa_accounts")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("require_mfa")
