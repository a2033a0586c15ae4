"""access tokens remembered by the grant (authorization code) they descend from

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A reused authorization code revokes every access token its grant produced (RFC 6749
    # 4.1.2); these rows name them until they expire.
    op.create_table(
        "grant_access_tokens",
        sa.Column("grant_id", sa.String(length=64), nullable=False),
        sa.Column("jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("grant_id", "jti", name=op.f("pk_grant_access_tokens")),
    )


def downgrade() -> None:
    op.drop_table("grant_access_tokens")
