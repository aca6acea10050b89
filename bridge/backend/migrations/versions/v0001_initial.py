"""Initial schema: registry (patients, gateways, devices), data tables, dead letters, audit.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Frozen: it spells every type out with plain SQLAlchemy types, so later changes to
``bridge.backend.store`` never change what this revision creates.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

ID = 64


def _instant() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True)


def _row_id() -> sa.Column[int]:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                     autoincrement=True, nullable=False)


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _data_table(name: str, *extra: sa.Column[Any] | sa.Constraint) -> None:
    op.create_table(
        name,
        _row_id(),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("patient_id", sa.String(ID), nullable=False),
        sa.Column("device_id", sa.String(ID), nullable=False),
        sa.Column("gateway_id", sa.String(ID), nullable=False),
        sa.Column("time", _instant(), nullable=False),
        sa.Column("device_time", sa.DateTime(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("time_quality", sa.String(200), nullable=False),
        sa.Column("mdc_code", sa.BigInteger(), nullable=True),
        sa.Column("loinc", sa.String(16), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("record", _json(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("received_at", _instant(), nullable=False),
        sa.Column("inserted_at", _instant(), nullable=False),
        *extra,
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"],
                                name=f"fk_{name}_device_id_devices"),
        sa.ForeignKeyConstraint(["gateway_id"], ["gateways.id"],
                                name=f"fk_{name}_gateway_id_gateways"),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name=f"fk_{name}_patient_id_patients"),
        sa.PrimaryKeyConstraint("id", name=f"pk_{name}"),
        sa.UniqueConstraint("key", name=f"uq_{name}_key"),
    )


def _index(table: str, *columns: str) -> None:
    op.create_index(f"ix_{table}_{'_'.join(columns)}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.String(ID), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("auto_provisioned", sa.Boolean(), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_patients"),
    )
    op.create_table(
        "gateways",
        sa.Column("id", sa.String(ID), nullable=False),
        sa.Column("patient_id", sa.String(ID), nullable=False),
        sa.Column("cert_subject", sa.String(512), nullable=True),
        sa.Column("cert_fingerprint", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_at", _instant(), nullable=True),
        sa.Column("agent_version", sa.String(64), nullable=True),
        sa.Column("last_contact", _instant(), nullable=True),
        sa.Column("auto_provisioned", sa.Boolean(), nullable=False),
        sa.Column("created_at", _instant(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name="fk_gateways_patient_id_patients"),
        sa.PrimaryKeyConstraint("id", name="pk_gateways"),
        sa.UniqueConstraint("cert_fingerprint", name="uq_gateways_cert_fingerprint"),
    )
    _index("gateways", "patient_id")
    op.create_table(
        "devices",
        sa.Column("id", sa.String(ID), nullable=False),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("gateway_id", sa.String(ID), nullable=True),
        sa.Column("patient_id", sa.String(ID), nullable=True),
        sa.Column("manufacturer", sa.String(128), nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("serial_number", sa.String(128), nullable=True),
        sa.Column("firmware_revision", sa.String(64), nullable=True),
        sa.Column("hardware_revision", sa.String(64), nullable=True),
        sa.Column("software_revision", sa.String(64), nullable=True),
        sa.Column("system_id", sa.String(32), nullable=True),
        sa.Column("transport", sa.String(16), nullable=True),
        sa.Column("address", sa.String(256), nullable=True),
        sa.Column("calibration_state", sa.String(32), nullable=True),
        sa.Column("calibration_at", _instant(), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("status_at", _instant(), nullable=True),
        sa.Column("last_sync", _instant(), nullable=True),
        sa.Column("records_synced", sa.BigInteger(), nullable=True),
        sa.Column("queued", sa.BigInteger(), nullable=True),
        sa.Column("dropped", sa.BigInteger(), nullable=True),
        sa.Column("errors", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("last_contact", _instant(), nullable=True),
        sa.Column("first_seen", _instant(), nullable=False),
        sa.ForeignKeyConstraint(["gateway_id"], ["gateways.id"],
                                name="fk_devices_gateway_id_gateways"),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"],
                                name="fk_devices_patient_id_patients"),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
    )
    _index("devices", "gateway_id")
    _index("devices", "patient_id")

    _data_table(
        "glucose_readings",
        sa.Column("sample_type", sa.String(32), nullable=False),
        sa.Column("sample_location", sa.String(32), nullable=False),
        sa.Column("meal", sa.String(16), nullable=True),
        sa.Column("annunciations", sa.String(500), nullable=False),
    )
    _index("glucose_readings", "patient_id", "loinc", "time")
    _data_table(
        "cgm_readings",
        sa.Column("trend_mg_dl_per_min", sa.Float(), nullable=True),
        sa.Column("quality_percent", sa.Float(), nullable=True),
        sa.Column("annunciations", sa.String(500), nullable=False),
        sa.Column("session_start", _instant(), nullable=True),
        sa.Column("time_offset_min", sa.BigInteger(), nullable=True),
    )
    _index("cgm_readings", "patient_id", "loinc", "time")
    _data_table(
        "insulin_events",
        sa.Column("kind", sa.String(32), nullable=False),
    )
    _index("insulin_events", "patient_id", "kind", "time")
    _index("insulin_events", "patient_id", "mdc_code", "time")
    _data_table(
        "annunciations",
        sa.Column("annunciation", sa.String(40), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("instance_id", sa.BigInteger(), nullable=True),
    )
    _index("annunciations", "patient_id", "time")
    for table in ("glucose_readings", "cgm_readings", "insulin_events", "annunciations"):
        _index(table, "device_id", "time")
        _index(table, "inserted_at")
        _index(table, "time")

    op.create_table(
        "dead_letters",
        _row_id(),
        sa.Column("received_at", _instant(), nullable=False),
        sa.Column("topic", sa.String(512), nullable=False),
        sa.Column("gateway_id", sa.String(ID), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(1000), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_size", sa.BigInteger(), nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    _index("dead_letters", "reason", "received_at")
    _index("dead_letters", "received_at")

    op.create_table(
        "audit_log",
        _row_id(),
        sa.Column("at", _instant(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject_type", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("patient_id", sa.String(ID), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    _index("audit_log", "patient_id", "at")
    _index("audit_log", "at")


def downgrade() -> None:
    for table in ("audit_log", "dead_letters", "annunciations", "insulin_events",
                  "cgm_readings", "glucose_readings", "devices", "gateways", "patients"):
        op.drop_table(table)
