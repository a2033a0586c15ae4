"""CAS server: registered services, tickets, and logout deliveries that name their protocol

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing deliveries all carry OpenID Connect logout tokens, the only kind there was.
    with op.batch_alter_table("logout_deliveries") as batch:
        batch.add_column(
            sa.Column("protocol", sa.String(length=16), nullable=False, server_default="oidc")
        )
        batch.add_column(sa.Column("ref", sa.String(length=100), nullable=True))
    op.create_table(
        "cas_services",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("urls", sa.JSON(), nullable=False),
        sa.Column("domain", sa.String(length=100), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("first_party", sa.Boolean(), nullable=False),
        sa.Column("proxy_callbacks", sa.JSON(), nullable=False),
        sa.Column("single_logout", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cas_services")),
    )
    op.create_table(
        "cas_tickets",
        sa.Column("ticket_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=4), nullable=False),
        sa.Column("service_name", sa.String(length=100), nullable=False),
        sa.Column("service_url", sa.String(length=2000), nullable=False),
        sa.Column("sid", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("consumed_at", sa.Float(), nullable=True),
        sa.Column("from_new_login", sa.Boolean(), nullable=False),
        sa.Column("parent_hash", sa.String(length=64), nullable=True),
        sa.Column("proxies", sa.JSON(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("ticket_hash", name=op.f("pk_cas_tickets")),
    )
    op.create_index("ix_cas_tickets_sid", "cas_tickets", ["sid"], unique=False)
    op.create_index("ix_cas_tickets_created_at", "cas_tickets", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_cas_tickets_created_at", table_name="cas_tickets")
    op.drop_index("ix_cas_tickets_sid", table_name="cas_tickets")
    op.drop_table("cas_tickets")
    op.drop_table("cas_services")
    with op.batch_alter_table("logout_deliveries") as batch:
        batch.drop_column("ref")
        batch.drop_column("protocol")
