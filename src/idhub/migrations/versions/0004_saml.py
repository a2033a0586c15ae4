"""SAML identity provider: service providers, certificates, seen message ids

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (Logout deliveries already name their protocol since 0003.)
    op.create_table(
        "saml_service_providers",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("entity_id", sa.String(length=500), nullable=False),
        sa.Column("domain", sa.String(length=100), nullable=False),
        sa.Column("metadata_xml", sa.Text(), nullable=False),
        sa.Column("name_id_format", sa.String(length=20), nullable=False),
        sa.Column("legacy_sha1", sa.Boolean(), nullable=False),
        sa.Column("require_signed_requests", sa.Boolean(), nullable=False),
        sa.Column("first_party", sa.Boolean(), nullable=False),
        sa.Column("attributes", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_saml_service_providers")),
        sa.UniqueConstraint("entity_id", name=op.f("uq_saml_service_providers_entity_id")),
    )
    op.create_table(
        "saml_certificates",
        sa.Column("kid", sa.String(length=100), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_saml_certificates")),
    )
    op.create_table(
        "saml_message_ids",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saml_message_ids")),
    )
    op.create_index(
        "ix_saml_message_ids_expires_at", "saml_message_ids", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_saml_message_ids_expires_at", table_name="saml_message_ids")
    op.drop_table("saml_message_ids")
    op.drop_table("saml_certificates")
    op.drop_table("saml_service_providers")
