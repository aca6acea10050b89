"""Portal login throttling: failed logins per login name and client address.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Kept in the database, not in a process, so that a lockout holds across restarts and across
every server process on the same store (docs/authorization.md, "The patient portal"). Frozen
like 0001: plain SQLAlchemy types and spelled-out names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "portal_login_failures"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("login_sha256", sa.String(64), nullable=False),
        sa.Column("client_address", sa.String(45), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"pk_{TABLE}"),
    )
    op.create_index(f"ix_{TABLE}_login_sha256_failed_at", TABLE, ["login_sha256", "failed_at"])
    op.create_index(f"ix_{TABLE}_client_address_failed_at", TABLE,
                    ["client_address", "failed_at"])
    op.create_index(f"ix_{TABLE}_failed_at", TABLE, ["failed_at"])


def downgrade() -> None:
    op.drop_table(TABLE)
