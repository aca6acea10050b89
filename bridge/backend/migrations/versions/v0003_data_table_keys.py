"""Data tables: drop the patient and gateway foreign keys, keep the device one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

Each data row copies ``patient_id`` and ``gateway_id`` from the registry so that the HDDT
searches (one patient, one code, a time range) run on the row's own index without a join.
Checking those copies against ``patients`` and ``gateways`` on every insert was two thirds
of PostgreSQL's work per row, and bought nothing: the ingest reads the gateway (and with it
the patient) and creates or updates the device row in the same transaction before it writes
the data rows, and neither patients nor gateways are ever deleted. The ``device_id`` key
stays (see docs/backend.md, "Keys of the data tables").

Frozen like 0001: constraint names spelled out. SQLite cannot drop a constraint in place;
Alembic's batch mode copies the table there (and alters in place on PostgreSQL).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

DATA_TABLES = ("glucose_readings", "cgm_readings", "insulin_events", "annunciations")
#: The redundant keys: column -> referred table.
DROPPED = {"patient_id": "patients", "gateway_id": "gateways"}


def upgrade() -> None:
    for table in DATA_TABLES:
        with op.batch_alter_table(table) as batch:
            for column, parent in DROPPED.items():
                batch.drop_constraint(f"fk_{table}_{column}_{parent}", type_="foreignkey")


def downgrade() -> None:
    for table in DATA_TABLES:
        with op.batch_alter_table(table) as batch:
            for column, parent in DROPPED.items():
                batch.create_foreign_key(f"fk_{table}_{column}_{parent}", parent, [column],
                                         ["id"])
