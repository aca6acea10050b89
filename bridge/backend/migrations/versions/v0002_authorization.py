"""Authorization server: DiGA directory, portal accounts, pairings, PAR, codes, tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Frozen like 0001: plain SQLAlchemy types only (the tables are described for queries in
``bridge.auth.tables``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

ID = 64
CLIENT = 32
HASH = 64


def _instant() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _fk(table: str, column: str, parent: str, parent_column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{parent}.{parent_column}"],
                                   name=f"fk_{table}_{column}_{parent}")


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "diga_clients",
        sa.Column("client_id", sa.String(CLIENT), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("redirect_uris", _json(), nullable=False),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("certificate_sha256", sa.String(HASH), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        sa.Column("updated_at", _instant(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name="pk_diga_clients"),
        sa.UniqueConstraint("certificate_sha256", name="uq_diga_clients_certificate_sha256"),
    )
    op.create_table(
        "portal_accounts",
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("patient_id", sa.String(ID), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        _fk("portal_accounts", "patient_id", "patients", "id"),
        sa.PrimaryKeyConstraint("username", name="pk_portal_accounts"),
    )
    _index("portal_accounts", "patient_id")
    op.create_table(
        "pairings",
        sa.Column("id", sa.String(HASH), nullable=False),
        sa.Column("patient_id", sa.String(ID), nullable=False),
        sa.Column("client_id", sa.String(CLIENT), nullable=False),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("granted_at", _instant(), nullable=False),
        sa.Column("expires_at", _instant(), nullable=False),
        sa.Column("prescription_end", _instant(), nullable=True),
        sa.Column("revoked_at", _instant(), nullable=True),
        sa.Column("revoked_by", sa.String(32), nullable=True),
        _fk("pairings", "patient_id", "patients", "id"),
        _fk("pairings", "client_id", "diga_clients", "client_id"),
        sa.PrimaryKeyConstraint("id", name="pk_pairings"),
    )
    _index("pairings", "patient_id")
    _index("pairings", "client_id")
    op.create_table(
        "par_requests",
        sa.Column("request_uri", sa.String(128), nullable=False),
        sa.Column("client_id", sa.String(CLIENT), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        sa.Column("expires_at", _instant(), nullable=False),
        sa.Column("used_at", _instant(), nullable=True),
        _fk("par_requests", "client_id", "diga_clients", "client_id"),
        sa.PrimaryKeyConstraint("request_uri", name="pk_par_requests"),
    )
    op.create_table(
        "oauth_grants",
        sa.Column("id", sa.String(HASH), nullable=False),
        sa.Column("pairing_id", sa.String(HASH), nullable=False),
        sa.Column("client_id", sa.String(CLIENT), nullable=False),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        sa.Column("revoked_at", _instant(), nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
        _fk("oauth_grants", "pairing_id", "pairings", "id"),
        _fk("oauth_grants", "client_id", "diga_clients", "client_id"),
        sa.PrimaryKeyConstraint("id", name="pk_oauth_grants"),
    )
    _index("oauth_grants", "pairing_id")
    op.create_table(
        "authorization_codes",
        sa.Column("code_sha256", sa.String(HASH), nullable=False),
        sa.Column("client_id", sa.String(CLIENT), nullable=False),
        sa.Column("pairing_id", sa.String(HASH), nullable=False),
        sa.Column("redirect_uri", sa.String(2000), nullable=False),
        sa.Column("scopes", _json(), nullable=False),
        sa.Column("code_challenge", sa.String(128), nullable=False),
        sa.Column("code_challenge_method", sa.String(8), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        sa.Column("expires_at", _instant(), nullable=False),
        sa.Column("used_at", _instant(), nullable=True),
        sa.Column("grant_id", sa.String(HASH), nullable=True),
        _fk("authorization_codes", "client_id", "diga_clients", "client_id"),
        _fk("authorization_codes", "pairing_id", "pairings", "id"),
        sa.PrimaryKeyConstraint("code_sha256", name="pk_authorization_codes"),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("jti", sa.String(HASH), nullable=False),
        sa.Column("grant_id", sa.String(HASH), nullable=False),
        sa.Column("issued_at", _instant(), nullable=False),
        sa.Column("expires_at", _instant(), nullable=False),
        sa.Column("rotated_at", _instant(), nullable=True),
        _fk("refresh_tokens", "grant_id", "oauth_grants", "id"),
        sa.PrimaryKeyConstraint("jti", name="pk_refresh_tokens"),
    )
    _index("refresh_tokens", "grant_id")
    op.create_table(
        "access_tokens",
        sa.Column("jti", sa.String(HASH), nullable=False),
        sa.Column("grant_id", sa.String(HASH), nullable=False),
        sa.Column("issued_at", _instant(), nullable=False),
        sa.Column("expires_at", _instant(), nullable=False),
        _fk("access_tokens", "grant_id", "oauth_grants", "id"),
        sa.PrimaryKeyConstraint("jti", name="pk_access_tokens"),
    )
    _index("access_tokens", "grant_id")
    _index("access_tokens", "expires_at")


def downgrade() -> None:
    for table in ("access_tokens", "refresh_tokens", "authorization_codes", "oauth_grants",
                  "par_requests", "pairings", "portal_accounts", "diga_clients"):
        op.drop_table(table)
