"""the per-system `require_mfa` setting for CAS services and SAML service providers

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-01 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("cas_services", "saml_service_providers"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("require_mfa", sa.Boolean(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    for table in ("saml_service_providers", "cas_services"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("require_mfa")
