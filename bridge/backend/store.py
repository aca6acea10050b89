"""The backend store: SQLAlchemy Core tables and the queries on them.

One schema, two engines: SQLite (WAL) as the embedded default, PostgreSQL in tests and in
production. The schema is created and upgraded only by the Alembic migrations in
:mod:`bridge.backend.migrations` (:meth:`Store.open` runs them); the :data:`metadata` here
describes the same tables for the queries, and a test keeps the two identical.

Exactly-once in the store: every data row carries the record's idempotency key under a
UNIQUE constraint and is written with ``INSERT … ON CONFLICT DO NOTHING`` (the dialect's own
insert construct), so a QoS 1 redelivery, a second worker or a replay after a crash never
doubles a record.

Tables:

* ``patients``, ``gateways`` (patient, client certificate subject and fingerprint, status,
  last contact), ``devices`` (identity from DeviceInfo, kind, gateway, patient, CGM
  calibration state, status, last contact);
* data: ``glucose_readings`` (meters), ``cgm_readings``, ``insulin_events`` (every pump
  record kind, with ``kind`` and the whole record as JSON) and ``annunciations``. Each row has
  patient, device, gateway, idempotency key, UTC time, device time, the MDC/LOINC code from
  :data:`bridge.records.CODINGS`, value and UCUM unit, the canonical record JSON,
  ``received_at`` (when the broker handed the message over) and ``inserted_at``;
* ``dead_letters`` (refused payloads with reason, topic, gateway, bounded raw bytes) and
  ``audit_log`` (who did what when: provisioning now, data access by the HDDT layer later).

``inserted_at`` is the row's "last updated" instant for FHIR ``_lastUpdated``: each process
hands out non-decreasing instants (:class:`UtcClock`). Rows of concurrent workers commit in
their own order, so a reader paging by ``inserted_at`` should leave a margin of a few
seconds behind the newest value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bridge.errors import BridgeError
from bridge.records import (
    CODINGS,
    AnnunciationEvent,
    AnyRecord,
    BasalRateChange,
    BloodGlucoseReading,
    CgmReading,
    DeviceInfo,
    InsulinBolus,
    RecordKind,
    ReservoirLevel,
    TempBasalStart,
    TempBasalType,
    TotalDailyInsulin,
    record_from_json,
    record_to_json,
)

#: Length of gateway, device and patient ids (the MQTT contract allows 1-64 characters).
ID_LEN = 64
#: Longest idempotency key stored (device id ≤ 64 plus kind and identifier).
KEY_LEN = 255
#: Retention may not be shorter than this: HDDT exports the last 30 days.
MIN_RETENTION_DAYS = 30


class StoreError(BridgeError):
    """The store cannot do what was asked (bad URL, refused retention, unknown row)."""


# --- column types ----------------------------------------------------------------------------

class UtcDateTime(sa.types.TypeDecorator[dt.datetime]):
    """An instant, always aware UTC in Python.

    PostgreSQL keeps ``timestamp with time zone``; SQLite has no such type, so the value is
    stored as naive UTC text (which sorts correctly) and given its zone back when read.
    Naive values are refused: they are ambiguous.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None,
                           dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise StoreError(f"instant {value.isoformat()} has no time zone")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None,
                             dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _id_type() -> sa.types.TypeEngine[int]:
    # SQLite assigns row ids automatically only to a column declared exactly INTEGER.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json_type() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


# --- tables ----------------------------------------------------------------------------------

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

patients = sa.Table(
    "patients", metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("display_name", sa.String(200)),
    sa.Column("auto_provisioned", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

gateways = sa.Table(
    "gateways", metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("patient_id", sa.String(ID_LEN), sa.ForeignKey("patients.id"), nullable=False),
    sa.Column("cert_subject", sa.String(512)),
    # SHA-256 of the certificate's DER bytes, lower-case hex.
    sa.Column("cert_fingerprint", sa.String(64), unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_at", UtcDateTime),
    sa.Column("agent_version", sa.String(64)),
    sa.Column("last_contact", UtcDateTime),
    sa.Column("auto_provisioned", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Index(None, "patient_id"),
)

#: DeviceInfo fields kept as columns of ``devices`` (all optional strings).
DEVICE_INFO_COLUMNS: Mapping[str, int] = {
    "manufacturer": 128, "model": 128, "serial_number": 128, "firmware_revision": 64,
    "hardware_revision": 64, "software_revision": 64, "system_id": 32, "transport": 16,
    "address": 256,
}

devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.String(ID_LEN), primary_key=True),
    sa.Column("kind", sa.String(32)),
    sa.Column("gateway_id", sa.String(ID_LEN), sa.ForeignKey("gateways.id")),
    sa.Column("patient_id", sa.String(ID_LEN), sa.ForeignKey("patients.id")),
    *(sa.Column(name, sa.String(length)) for name, length in DEVICE_INFO_COLUMNS.items()),
    # CGM only: "calibrated" or "calibration-required", from the newest reading's
    # annunciations, and the time of that reading.
    sa.Column("calibration_state", sa.String(32)),
    sa.Column("calibration_at", UtcDateTime),
    # From the gateway's retained device status.
    sa.Column("status", sa.String(16)),
    sa.Column("status_at", UtcDateTime),
    sa.Column("last_sync", UtcDateTime),
    sa.Column("records_synced", sa.BigInteger),
    sa.Column("queued", sa.BigInteger),
    sa.Column("dropped", sa.BigInteger),
    sa.Column("errors", sa.BigInteger),
    sa.Column("last_error", sa.String(500)),
    sa.Column("last_contact", UtcDateTime),
    sa.Column("first_seen", UtcDateTime, nullable=False),
    sa.Index(None, "patient_id"),
    sa.Index(None, "gateway_id"),
)


def _data_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", _id_type(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(KEY_LEN), nullable=False, unique=True),
        # Copies of the device's patient and gateway for the HDDT indexes, written by the
        # ingest with the device row in the same transaction: no foreign key of their own
        # (migration 0003; docs/backend.md, "Keys of the data tables").
        sa.Column("patient_id", sa.String(ID_LEN), nullable=False),
        sa.Column("device_id", sa.String(ID_LEN), sa.ForeignKey("devices.id"),
                  nullable=False),
        sa.Column("gateway_id", sa.String(ID_LEN), nullable=False),
        sa.Column("time", UtcDateTime, nullable=False),
        # The device's own wall-clock time, naive, as the device showed it.
        sa.Column("device_time", sa.DateTime(timezone=False)),
        sa.Column("sequence", sa.BigInteger),
        # Sorted TimeQuality values, comma-separated ("" when the time is trusted).
        sa.Column("time_quality", sa.String(200), nullable=False),
        sa.Column("mdc_code", sa.BigInteger),
        sa.Column("loinc", sa.String(16)),
        sa.Column("value", sa.Float),
        sa.Column("unit", sa.String(16), nullable=False),
        # The canonical record (bridge.records.record_to_json), to rebuild it exactly.
        sa.Column("record", _json_type(), nullable=False),
        sa.Column("batch_id", sa.String(64)),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("inserted_at", UtcDateTime, nullable=False),
    ]


glucose_readings = sa.Table(
    "glucose_readings", metadata,
    *_data_columns(),
    sa.Column("sample_type", sa.String(32), nullable=False),
    sa.Column("sample_location", sa.String(32), nullable=False),
    sa.Column("meal", sa.String(16)),
    sa.Column("annunciations", sa.String(500), nullable=False),
    # HDDT searches: one patient's readings of one code in a time range.
    sa.Index(None, "patient_id", "loinc", "time"),
    sa.Index(None, "device_id", "time"),
    sa.Index(None, "inserted_at"),
    sa.Index(None, "time"),
)

cgm_readings = sa.Table(
    "cgm_readings", metadata,
    *_data_columns(),
    sa.Column("trend_mg_dl_per_min", sa.Float),
    sa.Column("quality_percent", sa.Float),
    sa.Column("annunciations", sa.String(500), nullable=False),
    sa.Column("session_start", UtcDateTime),
    sa.Column("time_offset_min", sa.BigInteger),
    sa.Index(None, "patient_id", "loinc", "time"),
    sa.Index(None, "device_id", "time"),
    sa.Index(None, "inserted_at"),
    sa.Index(None, "time"),
)

insulin_events = sa.Table(
    "insulin_events", metadata,
    *_data_columns(),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Index(None, "patient_id", "kind", "time"),
    sa.Index(None, "patient_id", "mdc_code", "time"),
    sa.Index(None, "device_id", "time"),
    sa.Index(None, "inserted_at"),
    sa.Index(None, "time"),
)

annunciations = sa.Table(
    "annunciations", metadata,
    *_data_columns(),
    sa.Column("annunciation", sa.String(40), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("instance_id", sa.BigInteger),
    sa.Index(None, "patient_id", "time"),
    sa.Index(None, "device_id", "time"),
    sa.Index(None, "inserted_at"),
    sa.Index(None, "time"),
)

dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", _id_type(), primary_key=True, autoincrement=True),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("topic", sa.String(512), nullable=False),
    # Gateway id taken from the topic (None when the topic itself was not valid).
    sa.Column("gateway_id", sa.String(ID_LEN)),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.String(1000), nullable=False),
    # The payload as received, cut to the configured bound; size and digest of the whole.
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("payload_size", sa.BigInteger, nullable=False),
    sa.Column("payload_sha256", sa.String(64), nullable=False),
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Index(None, "reason", "received_at"),
    sa.Index(None, "received_at"),
)

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", _id_type(), primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject_type", sa.String(32), nullable=False),
    sa.Column("subject_id", sa.String(128), nullable=False),
    sa.Column("patient_id", sa.String(ID_LEN)),
    sa.Column("detail", _json_type()),
    sa.Index(None, "patient_id", "at"),
    sa.Index(None, "at"),
)

#: Where each record kind is stored.
TABLE_OF_KIND: Mapping[RecordKind, sa.Table] = {
    RecordKind.BLOOD_GLUCOSE: glucose_readings,
    RecordKind.CGM_GLUCOSE: cgm_readings,
    RecordKind.INSULIN_BOLUS: insulin_events,
    RecordKind.BASAL_RATE_CHANGE: insulin_events,
    RecordKind.TEMP_BASAL_START: insulin_events,
    RecordKind.TEMP_BASAL_END: insulin_events,
    RecordKind.TOTAL_DAILY_INSULIN: insulin_events,
    RecordKind.RESERVOIR_LEVEL: insulin_events,
    RecordKind.THERAPY_STATE_CHANGE: insulin_events,
    RecordKind.OPERATIONAL_STATE_CHANGE: insulin_events,
    RecordKind.ANNUNCIATION: annunciations,
}
DATA_TABLES: tuple[sa.Table, ...] = (glucose_readings, cgm_readings, insulin_events,
                                     annunciations)


# --- engine --------------------------------------------------------------------------------

def create_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://…``).

    SQLite: WAL, full fsync on commit (the ingest acknowledges only after a durable commit),
    foreign keys on, a 30 s busy timeout, and every transaction begun ``IMMEDIATE`` so that
    concurrent writers queue for the lock instead of failing on an upgrade from read to
    write. PostgreSQL: connections are checked before use, so a restarted server costs one
    failed attempt, not a poisoned pool.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = sa.create_engine(parsed, echo=echo, connect_args={"timeout": 30.0})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            # The driver's own transaction handling is switched off; "begin" below emits it.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                           "busy_timeout=30000"):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # Store.read() asks for a deferred transaction: a snapshot, no write lock.
            deferred = connection.get_execution_options().get("deferred_begin", False)
            connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

        return engine
    if backend == "postgresql":
        return sa.create_engine(parsed, echo=echo, pool_pre_ping=True, pool_size=5,
                                max_overflow=5)
    raise StoreError(f"unsupported database {backend!r}: use sqlite:/// or postgresql+psycopg://")


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT construct, which has ``on_conflict_do_nothing``."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise StoreError(f"unsupported dialect {conn.dialect.name!r}")  # pragma: no cover


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure (server restarting, connection lost, lock timeout,
    serialization conflict); False for errors that the same data would cause again."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError):
        return False
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError
                      | sa.exc.DisconnectionError | sa.exc.TimeoutError)


class UtcClock:
    """Now in UTC, never going backwards within this process (for ``inserted_at``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = dt.datetime.min.replace(tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        with self._lock:
            now = dt.datetime.now(dt.UTC)
            if now <= self._last:
                now = self._last + dt.timedelta(microseconds=1)
            self._last = now
            return now


# --- rows of records -------------------------------------------------------------------------

def _plain_list(values: Iterable[Any]) -> str:
    return ",".join(sorted(str(getattr(v, "value", v)) for v in values))


def _value_and_unit(record: AnyRecord) -> tuple[float | None, str]:
    unit = CODINGS[record.KIND].ucum
    if isinstance(record, BloodGlucoseReading | CgmReading):
        return record.glucose_mg_dl, unit
    if isinstance(record, InsulinBolus):
        return record.total_iu, unit
    if isinstance(record, BasalRateChange):
        return record.rate_iu_per_h, unit
    if isinstance(record, TempBasalStart):
        relative = record.temp_basal_type is TempBasalType.RELATIVE
        return record.value, "%" if relative else unit
    if isinstance(record, TotalDailyInsulin):
        return record.total_iu, unit
    if isinstance(record, ReservoirLevel):
        return record.remaining_iu, unit
    return None, unit


#: Columns of a data row as :func:`write_rows` takes them, in order: first what the message
#: and the commit give (:data:`CONTEXT_COLUMNS`), then the record's own values
#: (:data:`RECORD_COLUMNS`, then the table's :data:`EXTRA_COLUMNS`).
CONTEXT_COLUMNS: tuple[str, ...] = ("patient_id", "gateway_id", "batch_id", "received_at",
                                    "inserted_at")
RECORD_COLUMNS: tuple[str, ...] = ("key", "device_id", "time", "device_time", "sequence",
                                   "time_quality", "mdc_code", "loinc", "value", "unit",
                                   "record")
EXTRA_COLUMNS: Mapping[sa.Table, tuple[str, ...]] = {
    glucose_readings: ("sample_type", "sample_location", "meal", "annunciations"),
    cgm_readings: ("trend_mg_dl_per_min", "quality_percent", "annunciations", "session_start",
                   "time_offset_min"),
    insulin_events: ("kind",),
    annunciations: ("annunciation", "status", "instance_id"),
}


def row_columns(table: sa.Table) -> tuple[str, ...]:
    """The columns of ``table`` in the order of :func:`write_rows`' tuples."""
    return CONTEXT_COLUMNS + RECORD_COLUMNS + EXTRA_COLUMNS[table]


def record_values(record: AnyRecord) -> tuple[sa.Table, tuple[Any, ...]]:
    """The table of ``record`` and its own values, in the order of
    ``RECORD_COLUMNS + EXTRA_COLUMNS[table]``."""
    coding = CODINGS[record.KIND]
    value, unit = _value_and_unit(record)
    table = TABLE_OF_KIND[record.KIND]
    common = (record.idempotency_key(), record.device_id, record.time, record.device_time,
              record.sequence, _plain_list(record.time_quality), coding.mdc, coding.loinc,
              value, unit, record_to_json(record))
    extra: tuple[Any, ...]
    if isinstance(record, BloodGlucoseReading):
        extra = (record.sample_type.value, record.sample_location.value,
                 None if record.meal is None else record.meal.value,
                 _plain_list(record.annunciations))
    elif isinstance(record, CgmReading):
        extra = (record.trend_mg_dl_per_min, record.quality_percent,
                 _plain_list(record.annunciations), record.session_start,
                 record.time_offset_min)
    elif isinstance(record, AnnunciationEvent):
        extra = (record.annunciation.value, record.status.value, record.instance_id)
    else:
        extra = (record.KIND.value,)
    return table, common + extra


def record_row(record: AnyRecord, *, patient_id: str, gateway_id: str, received_at: dt.datetime,
               inserted_at: dt.datetime, batch_id: str | None = None
               ) -> tuple[sa.Table, dict[str, Any]]:
    """The table and the row that store ``record``."""
    table, values = record_values(record)
    context = (patient_id, gateway_id, batch_id, received_at, inserted_at)
    return table, dict(zip(row_columns(table), context + values, strict=True))


def insert_rows(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
                ) -> list[str]:
    """Insert ``rows`` into a data table, skipping keys already stored; returns the keys
    actually inserted (one statement per page of rows, ON CONFLICT DO NOTHING)."""
    if not rows:
        return []
    stmt = (dialect_insert(conn, table).on_conflict_do_nothing(index_elements=[table.c.key])
            .returning(table.c.key))
    return [row[0] for row in conn.execute(stmt, list(rows))]


def write_rows(conn: Connection, table: sa.Table, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert data rows given as tuples in :func:`row_columns` order, skipping keys already
    stored; returns how many were inserted. The ``record`` column is given as JSON text
    (serialised ahead of the transaction, see :mod:`bridge.backend.payload_rows`).

    PostgreSQL: binary ``COPY`` into a temporary staging table, then one
    ``INSERT … SELECT … ON CONFLICT (key) DO NOTHING`` (a multi-row INSERT of hundreds of rows
    spends most of its time building and parsing the statement). SQLite: the dialect's
    INSERT … ON CONFLICT DO NOTHING, executed for many parameter sets. Same transaction as
    the caller's either way.
    """
    if not rows:
        return 0
    columns = row_columns(table)
    if conn.dialect.name == "postgresql":
        return _copy_rows(conn, table, columns, rows)
    import json  # noqa: PLC0415

    at = columns.index("record")
    return len(insert_rows(conn, table, [
        dict(zip(columns, (*row[:at], json.loads(row[at]), *row[at + 1:]), strict=True))
        for row in rows]))


def _pg_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type name a binary COPY sends ``column`` as."""
    t = column.type
    if isinstance(t, UtcDateTime):
        return "timestamptz"
    if isinstance(t, sa.DateTime):
        return "timestamptz" if t.timezone else "timestamp"
    if isinstance(t, sa.JSON):
        return "jsonb"
    if isinstance(t, sa.BigInteger | sa.Integer):
        return "int8"
    if isinstance(t, sa.Float):
        return "float8"
    if isinstance(t, sa.Boolean):
        return "bool"
    if isinstance(t, sa.String):
        return "text"  # varchar receives the same bytes and still checks its length
    raise StoreError(f"no COPY type for {column}")  # pragma: no cover


_COPY_SQL: dict[str, tuple[str, str, str, list[str]]] = {}


def _copy_statements(table: sa.Table, columns: Sequence[str]) -> tuple[str, str, str, list[str]]:
    if table.name not in _COPY_SQL:
        stage = f"ingest_staging_{table.name}"
        cols = ", ".join(f'"{c}"' for c in columns)
        # JSON travels as text (serialised before the transaction) and becomes jsonb in the
        # INSERT; every other column has the table's own type (CREATE … AS … WITH NO DATA).
        # The staging table is emptied at each commit.
        json_cols = {c for c in columns if isinstance(table.c[c].type, sa.JSON)}
        staged = ", ".join(f'"{c}"::text AS "{c}"' if c in json_cols else f'"{c}"'
                           for c in columns)
        inserted = ", ".join(f'"{c}"::jsonb' if c in json_cols else f'"{c}"' for c in columns)
        create = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                  f"SELECT {staged} FROM {table.name} WITH NO DATA")
        copy = f"COPY {stage} ({cols}) FROM STDIN (FORMAT BINARY)"
        insert = (f"INSERT INTO {table.name} ({cols}) SELECT {inserted} FROM {stage} "
                  "ON CONFLICT (key) DO NOTHING")
        types = ["text" if c in json_cols else _pg_type(table.c[c]) for c in columns]
        _COPY_SQL[table.name] = (create, copy, insert, types)
    return _COPY_SQL[table.name]


def _copy_rows(conn: Connection, table: sa.Table, columns: Sequence[str],
               rows: Sequence[tuple[Any, ...]]) -> int:
    import psycopg  # noqa: PLC0415

    create, copy, insert, types = _copy_statements(table, columns)
    dbapi: Any = conn.connection.driver_connection
    statement = create
    try:
        with dbapi.cursor() as cur:
            # One round trip; NOTICE "already exists" is expected on every batch but the
            # connection's first, so notices are off for this transaction.
            cur.execute(f"SET LOCAL client_min_messages = warning; {create}")
            statement = copy
            with cur.copy(copy) as cp:
                cp.set_types(types)
                for row in rows:
                    cp.write_row(row)
            statement = insert
            cur.execute(insert)
            return int(cur.rowcount)
    except psycopg.Error as exc:
        # Raised as SQLAlchemy raises driver errors (DataError, OperationalError …), so
        # callers tell refused data from a database that went away the same way.
        invalidated = conn.dialect.is_disconnect(exc, dbapi, None)  # type: ignore[arg-type]
        if invalidated:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error,
                                         connection_invalidated=invalidated,
                                         dialect=conn.dialect) from exc


def device_info_row(info: DeviceInfo) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": info.kind.value}
    for name in DEVICE_INFO_COLUMNS:
        out[name] = getattr(info, name)
    return out


# --- dead letters and audit ------------------------------------------------------------------

def clean_text(value: str, limit: int) -> str:
    """``value`` made storable anywhere: NUL and other C0 controls escaped, cut to
    ``limit`` characters (PostgreSQL text cannot hold NUL at all)."""
    cleaned = "".join(c if c >= " " or c in "\t\n" else f"\\x{ord(c):02x}" for c in value)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    received_at: dt.datetime
    topic: str
    gateway_id: str | None
    reason: str
    detail: str
    payload: bytes
    payload_size: int
    payload_sha256: str
    truncated: bool
    id: int | None = None


def dead_letter_row(letter: DeadLetter) -> dict[str, Any]:
    row = dataclasses.asdict(letter)
    row.pop("id")
    row["topic"] = clean_text(letter.topic, 512)
    row["detail"] = clean_text(letter.detail, 1000)
    row["reason"] = clean_text(letter.reason, 32)
    if letter.gateway_id is not None:
        row["gateway_id"] = clean_text(letter.gateway_id, ID_LEN)
    return row


def add_dead_letters(conn: Connection, letters: Sequence[DeadLetter]) -> None:
    if letters:
        conn.execute(dead_letters.insert(), [dead_letter_row(d) for d in letters])


def list_dead_letters(conn: Connection, *, reason: str | None = None,
                      limit: int = 100) -> list[DeadLetter]:
    q = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if reason is not None:
        q = q.where(dead_letters.c.reason == reason)
    return [DeadLetter(**row._asdict()) for row in conn.execute(q)]


def audit(conn: Connection, *, actor: str, action: str, subject_type: str, subject_id: str,
          patient_id: str | None = None, detail: Mapping[str, Any] | None = None,
          at: dt.datetime | None = None) -> None:
    """Append one entry to the audit log (in the caller's transaction)."""
    conn.execute(audit_log.insert().values(
        at=at or dt.datetime.now(dt.UTC), actor=clean_text(actor, 128),
        action=clean_text(action, 64), subject_type=clean_text(subject_type, 32),
        subject_id=clean_text(subject_id, 128), patient_id=patient_id,
        detail=None if detail is None else dict(detail)))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: dt.datetime
    actor: str
    action: str
    subject_type: str
    subject_id: str
    patient_id: str | None
    detail: Any


def list_audit(conn: Connection, *, patient_id: str | None = None,
               limit: int = 100) -> list[AuditEntry]:
    q = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if patient_id is not None:
        q = q.where(audit_log.c.patient_id == patient_id)
    return [AuditEntry(**row._asdict()) for row in conn.execute(q)]


# --- reading records back --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored, with the columns the HDDT layer maps (ids, code, timestamps)."""

    id: int
    table: str
    key: str
    patient_id: str
    device_id: str
    gateway_id: str
    record: AnyRecord
    mdc_code: int | None
    loinc: str | None
    value: float | None
    unit: str
    received_at: dt.datetime
    inserted_at: dt.datetime


def query_records(conn: Connection, *, patient_id: str,
                  kinds: Iterable[RecordKind] | None = None, loinc: str | None = None,
                  start: dt.datetime | None = None, end: dt.datetime | None = None,
                  updated_since: dt.datetime | None = None, device_id: str | None = None,
                  limit: int | None = None) -> list[StoredRecord]:
    """One patient's records, oldest first: optionally of some kinds, of one LOINC code, in
    ``start <= time < end``, and inserted at or after ``updated_since``."""
    wanted = set(kinds) if kinds is not None else set(TABLE_OF_KIND)
    out: list[StoredRecord] = []
    for table in DATA_TABLES:
        table_kinds = {k for k, t in TABLE_OF_KIND.items() if t is table} & wanted
        if not table_kinds:
            continue
        q = sa.select(table).where(table.c.patient_id == patient_id)
        if table is insulin_events:
            q = q.where(table.c.kind.in_(sorted(k.value for k in table_kinds)))
        if loinc is not None:
            q = q.where(table.c.loinc == loinc)
        if start is not None:
            q = q.where(table.c.time >= start)
        if end is not None:
            q = q.where(table.c.time < end)
        if updated_since is not None:
            q = q.where(table.c.inserted_at >= updated_since)
        if device_id is not None:
            q = q.where(table.c.device_id == device_id)
        q = q.order_by(table.c.time, table.c.id)
        if limit is not None:
            q = q.limit(limit)
        for row in conn.execute(q).mappings():
            out.append(StoredRecord(
                id=row["id"], table=table.name, key=row["key"], patient_id=row["patient_id"],
                device_id=row["device_id"], gateway_id=row["gateway_id"],
                record=record_from_json(row["record"]), mdc_code=row["mdc_code"],
                loinc=row["loinc"], value=row["value"], unit=row["unit"],
                received_at=row["received_at"], inserted_at=row["inserted_at"]))
    out.sort(key=lambda r: (r.record.time, r.table, r.id))
    return out[:limit] if limit is not None else out


def count_records(conn: Connection) -> dict[str, int]:
    return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in DATA_TABLES}


# --- status and retention --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GatewayContact:
    gateway_id: str
    patient_id: str
    status: str
    status_at: dt.datetime | None
    last_contact: dt.datetime | None
    agent_version: str | None
    auto_provisioned: bool
    devices: int


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """What ``backend status`` shows."""

    now: dt.datetime
    records_last_minute: int
    records_total: dict[str, int]
    newest_received_at: dt.datetime | None
    dead_letters_by_reason: dict[str, int]
    gateways: list[GatewayContact]

    @property
    def lag_s(self) -> float | None:
        """Seconds since the newest stored record was received (None: nothing stored)."""
        if self.newest_received_at is None:
            return None
        return max(0.0, (self.now - self.newest_received_at).total_seconds())

    def to_json(self) -> dict[str, Any]:
        def iso(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "now": iso(self.now), "records_last_minute": self.records_last_minute,
            "records_total": self.records_total,
            "newest_received_at": iso(self.newest_received_at),
            "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
            "dead_letters_by_reason": self.dead_letters_by_reason,
            "gateways": [{"gateway_id": g.gateway_id, "patient_id": g.patient_id,
                          "status": g.status, "status_at": iso(g.status_at),
                          "last_contact": iso(g.last_contact),
                          "agent_version": g.agent_version,
                          "auto_provisioned": g.auto_provisioned, "devices": g.devices}
                         for g in self.gateways],
        }


def ingest_status(conn: Connection, now: dt.datetime | None = None) -> IngestStatus:
    now = now or dt.datetime.now(dt.UTC)
    minute_ago = now - dt.timedelta(minutes=1)
    recent = 0
    newest: dt.datetime | None = None
    for table in DATA_TABLES:
        recent += int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                   .where(table.c.inserted_at >= minute_ago)).scalar_one())
        value = conn.execute(sa.select(sa.func.max(table.c.received_at))).scalar_one()
        if value is not None and (newest is None or value > newest):
            newest = value
    reasons = {str(reason): int(n) for reason, n in conn.execute(
        sa.select(dead_letters.c.reason, sa.func.count()).group_by(dead_letters.c.reason)
        .order_by(dead_letters.c.reason))}
    device_counts = sa.select(devices.c.gateway_id, sa.func.count().label("n")).group_by(
        devices.c.gateway_id).subquery()
    rows = conn.execute(
        sa.select(gateways, sa.func.coalesce(device_counts.c.n, 0).label("n"))
        .outerjoin(device_counts, device_counts.c.gateway_id == gateways.c.id)
        .order_by(gateways.c.id)).mappings()
    contacts = [GatewayContact(
        gateway_id=r["id"], patient_id=r["patient_id"], status=r["status"],
        status_at=r["status_at"], last_contact=r["last_contact"],
        agent_version=r["agent_version"], auto_provisioned=bool(r["auto_provisioned"]),
        devices=int(r["n"])) for r in rows]
    return IngestStatus(now=now, records_last_minute=recent,
                        records_total=count_records(conn), newest_received_at=newest,
                        dead_letters_by_reason=reasons, gateways=contacts)


def check_retention_days(days: float) -> dt.timedelta:
    if not isinstance(days, int | float) or math.isnan(days) or days < MIN_RETENTION_DAYS:
        raise StoreError(f"retention of {days} days refused: at least {MIN_RETENTION_DAYS} "
                         "days are kept (HDDT exports the last 30 days)")
    return dt.timedelta(days=days)


def purge(conn: Connection, *, retention_days: float,
          dead_letter_retention_days: float | None = None,
          now: dt.datetime | None = None, dry_run: bool = False) -> dict[str, int]:
    """Delete data rows whose measurement time is older than the retention, and dead letters
    received before theirs; returns the count per table (what would go, with ``dry_run``).
    The audit log is never purged here."""
    retention = check_retention_days(retention_days)
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - retention
    counts: dict[str, int] = {}
    for table in DATA_TABLES:
        cond = table.c.time < cutoff
        if dry_run:
            counts[table.name] = int(conn.execute(
                sa.select(sa.func.count()).select_from(table).where(cond)).scalar_one())
        else:
            counts[table.name] = int(conn.execute(table.delete().where(cond)).rowcount)
    if dead_letter_retention_days is not None:
        dl_cutoff = now - dt.timedelta(days=dead_letter_retention_days)
        cond = dead_letters.c.received_at < dl_cutoff
        if dry_run:
            counts["dead_letters"] = int(conn.execute(
                sa.select(sa.func.count()).select_from(dead_letters).where(cond)).scalar_one())
        else:
            counts["dead_letters"] = int(conn.execute(
                dead_letters.delete().where(cond)).rowcount)
    return counts


# --- the store object ------------------------------------------------------------------------

class Store:
    """An engine on the backend database plus the operations other parts use.

    ``Store.open(url)`` creates the engine and brings the schema to the newest migration.
    Functions of this module take a :class:`~sqlalchemy.engine.Connection` so that callers can
    combine them in one transaction (``with store.begin() as conn``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = UtcClock()

    @classmethod
    def open(cls, url: str, *, migrate: bool = True, echo: bool = False) -> Store:
        engine = create_engine(url, echo=echo)
        if migrate:
            from bridge.backend.migrations import upgrade_to_head  # noqa: PLC0415

            try:
                upgrade_to_head(engine)
            except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
                engine.dispose()
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                raise StoreError(f"cannot open the database "
                                 f"{engine.url.render_as_string(hide_password=True)}: "
                                 f"{reason}") from None
        return cls(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for read-only work. On SQLite its transaction begins DEFERRED (a
        snapshot, no write lock), so readers never queue behind ingest; on PostgreSQL it runs
        in autocommit (each statement its own snapshot, no BEGIN/COMMIT round trips)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
                return
            conn.execution_options(deferred_begin=True)
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Convenience wrappers, each its own transaction.
    def counts(self) -> dict[str, int]:
        with self.begin() as conn:
            return count_records(conn)

    def status(self, now: dt.datetime | None = None) -> IngestStatus:
        with self.begin() as conn:
            return ingest_status(conn, now)

    def purge(self, *, retention_days: float, dead_letter_retention_days: float | None = None,
              now: dt.datetime | None = None, dry_run: bool = False) -> dict[str, int]:
        with self.begin() as conn:
            return purge(conn, retention_days=retention_days,
                         dead_letter_retention_days=dead_letter_retention_days, now=now,
                         dry_run=dry_run)

    def dead_letters(self, *, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        with self.begin() as conn:
            return list_dead_letters(conn, reason=reason, limit=limit)

    def records(self, **kwargs: Any) -> list[StoredRecord]:
        with self.begin() as conn:
            return query_records(conn, **kwargs)

    def audit_entries(self, *, patient_id: str | None = None,
                      limit: int = 100) -> list[AuditEntry]:
        with self.begin() as conn:
            return list_audit(conn, patient_id=patient_id, limit=limit)
