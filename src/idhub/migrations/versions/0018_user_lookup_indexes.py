"""users: indexes on lower(trim(...)) of username, email and employee number, the expressions
an upstream sign-in's account lookup narrows by (adapters/identity_store.py `users_matching`),
so a sign-in reads the few matching rows instead of scanning every user

Revision ID: 0018
Revises: 0015
Create Date: 2026-12-01 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0015"
branch_labels = None
depends_on = None

# The index expressions must be the exact expressions the query uses: neither SQLite's nor
# PostgreSQL's planner rewrites lower(trim(x)) into lower(x).
FOLDED = {
    "ix_users_username_folded": "username",
    "ix_users_email_folded": "email",
    "ix_users_employee_id_folded": "employee_id",
}


def upgrade() -> None:
    for name, column in FOLDED.items():
        op.create_index(name, "users", [sa.text(f"lower(trim({column}))")])


def downgrade() -> None:
    for name in FOLDED:
        op.drop_index(name, table_name="users")
