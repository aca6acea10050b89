"""Read-only queries of the resource server on the backend store.

Few round trips per request: one query for the patient's devices with the times of their
first and newest readings (correlated subqueries on the ``(device_id, time)`` indexes), one
for the meter readings of a page (keyset, LIMIT) and one per window of CGM chunks.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection

from bridge.backend.store import glucose_readings
from bridge.records import CODINGS, RecordKind

CGM_LOINC = CODINGS[RecordKind.CGM_GLUCOSE].loinc


def fhir_device_key(device_id: str) -> str:
    """16 hex digits naming a store device in FHIR ids (store ids may hold ``_`` and run to
    64 characters, FHIR ids may not; the hash also keeps backend ids out of the API)."""
    return hashlib.sha256(device_id.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device of the patient with what the resource server derives from its readings."""

    id: str
    key: str
    kind: str | None
    manufacturer: str | None
    model: str | None
    serial_number: str | None
    calibration_state: str | None
    last_contact: dt.datetime | None
    first_seen: dt.datetime
    first_cgm: dt.datetime | None
    last_cgm: dt.datetime | None
    first_bg: dt.datetime | None
    last_bg: dt.datetime | None
    last_insulin: dt.datetime | None = None


def _edge(table: str, order: str, dialect: str) -> str:
    """The first (``ASC``) or newest (``DESC``) reading time of device ``d.id``."""
    if dialect != "postgresql":
        return (f"(SELECT time FROM {table} x WHERE x.device_id = d.id "
                f"ORDER BY x.time {order} LIMIT 1)")
    # A row comparison only the (device_id, time) index can serve: with the plain equality
    # PostgreSQL may walk the time index instead and filter by device, through the whole
    # table for a device without rows there (few distinct devices in the statistics).
    op, bound = (">=", "-infinity") if order == "ASC" else ("<=", "infinity")
    return (f"(SELECT CASE WHEN y.device_id = d.id THEN y.time END FROM (SELECT device_id, "
            f"time FROM {table} x WHERE (x.device_id, x.time) {op} (d.id, "
            f"'{bound}'::timestamptz) ORDER BY x.device_id {order}, x.time {order} LIMIT 1) y)")


def _device_columns(dialect: str) -> str:
    return (
        "d.id, d.kind, d.manufacturer, d.model, d.serial_number, d.calibration_state, "
        "d.last_contact, d.first_seen, "
        f"{_edge('cgm_readings', 'ASC', dialect)}, {_edge('cgm_readings', 'DESC', dialect)}, "
        f"{_edge('glucose_readings', 'ASC', dialect)}, "
        f"{_edge('glucose_readings', 'DESC', dialect)}, "
        f"{_edge('insulin_events', 'DESC', dialect)}")


_DEVICES_SQL = {
    "postgresql": (f"SELECT {_device_columns('postgresql')} FROM devices d WHERE "
                   "d.patient_id = %(patient)s ORDER BY d.first_seen, d.id"),
    "sqlite": (f"SELECT {_device_columns('sqlite')} FROM devices d WHERE d.patient_id = ? "
               "ORDER BY d.first_seen, d.id"),
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def patient_devices(conn: Connection, patient_id: str) -> list[DeviceRow]:
    """Every device of the patient, oldest first, with the times of its first and newest
    readings (index lookups on ``(device_id, time)``)."""
    dialect = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
    rows = _fetch(conn, _DEVICES_SQL[dialect],
                  {"patient": patient_id} if dialect == "postgresql" else (patient_id,))
    return [DeviceRow(
        id=r[0], key=fhir_device_key(r[0]), kind=r[1], manufacturer=r[2], model=r[3],
        serial_number=r[4], calibration_state=r[5], last_contact=_utc(r[6]),
        first_seen=_utc(r[7]) or _EPOCH, first_cgm=_utc(r[8]), last_cgm=_utc(r[9]),
        first_bg=_utc(r[10]), last_bg=_utc(r[11]), last_insulin=_utc(r[12])) for r in rows]


def _fetch(conn: Connection, sql: str, params: Any) -> list[tuple[Any, ...]]:
    # The DB-API cursor itself: SQLAlchemy's result set-up costs more than these queries.
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    except conn.dialect.loaded_dbapi.Error:
        # Once more through SQLAlchemy: it tells a dropped connection (and renews the pool)
        # and raises its own error, on which the app runs the read again.
        return [tuple(r) for r in conn.exec_driver_sql(sql, params).all()]
    finally:
        cursor.close()


#: Reading tables a search fingerprint can cover, with the condition that keeps a table's
#: rows to those the searches read.
FINGERPRINT_TABLES: dict[str, str] = {
    "cgm_readings": " AND loinc = {loinc}", "glucose_readings": "", "insulin_events": ""}

#: Per table: the number of the patient's rows in ``[start, end)`` and their newest insertion.
_RANGE_SQL = {
    "postgresql": ("(SELECT json_build_array(count(*), max(inserted_at))::text FROM {table} "
                   "WHERE patient_id = %(patient)s{cond} AND time >= %(start)s "
                   "AND time < %(end)s)"),
    "sqlite": ("(SELECT json_array(count(*), max(inserted_at)) FROM {table} "
               "WHERE patient_id = ?{cond} AND time >= ? AND time < ?)"),
}
#: The device rows with their reading edges as one JSON text (unambiguous, one column).
_DEVICE_STATE_SQL = {
    "postgresql": (f"(SELECT json_agg(json_build_array({_device_columns('postgresql')}) "
                   "ORDER BY d.first_seen, d.id)::text FROM devices d "
                   "WHERE d.patient_id = %(patient)s)"),
    "sqlite": (f"(SELECT json_group_array(j) FROM (SELECT json_array("
               f"{_device_columns('sqlite')}) AS j FROM devices d WHERE d.patient_id = ? "
               "ORDER BY d.first_seen, d.id))"),
}


def search_fingerprint(conn: Connection, patient_id: str, tables: Sequence[str],
                       start: dt.datetime, end: dt.datetime) -> tuple[Any, ...]:
    """What a search answer depends on in the store, in one query of one row: per table of
    ``tables`` the number of the patient's rows with ``start <= time < end`` and their
    newest ``inserted_at`` (rows are only ever inserted, so a new row changes one of the
    two), and the patient's device rows with the times of their first and newest readings
    (a reading after the range may close a chunk or retire a sensor)."""
    sql, params = fingerprint_statement(conn.dialect.name, patient_id, tables, start, end)
    return fetch_one(conn, sql, params)


def fetch_one(conn: Connection, sql: str, params: Any) -> tuple[Any, ...]:
    """The one row of a driver-SQL query (a fingerprint)."""
    (row,) = _fetch(conn, sql, params)
    return tuple(row)


def fingerprint_statement(dialect: str, patient_id: str, tables: Sequence[str],
                          start: dt.datetime, end: dt.datetime) -> tuple[str, Any]:
    """The SQL and parameters of :func:`search_fingerprint` (for a connection of its own)."""
    dialect = "postgresql" if dialect == "postgresql" else "sqlite"
    sql = _fingerprint_sql(dialect, tuple(tables))
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    params: Any
    if dialect == "postgresql":
        params = {"patient": patient_id, "loinc": CGM_LOINC, "start": start, "end": end}
    else:  # the store keeps naive UTC text on SQLite
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        params = []
        for table in tables:
            params += [patient_id, *([CGM_LOINC] if FINGERPRINT_TABLES[table] else []),
                       start.strftime(fmt), end.strftime(fmt)]
        params.append(patient_id)
    return sql, params


@functools.lru_cache(maxsize=64)
def _fingerprint_sql(dialect: str, tables: tuple[str, ...]) -> str:
    # Built once per set of tables: the same text every time also lets psycopg prepare it.
    parts = [_RANGE_SQL[dialect].format(table=table, cond=FINGERPRINT_TABLES[table].format(
        loinc="%(loinc)s" if dialect == "postgresql" else "?")) for table in tables]
    return "SELECT " + ", ".join([*parts, _DEVICE_STATE_SQL[dialect]])


def _utc(value: Any) -> dt.datetime | None:
    # Aggregates bypass the column type: SQLite hands back naive text, PostgreSQL aware.
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class CgmRow(NamedTuple):
    """One CGM reading as the chunks need it (a tuple: built for hundreds per request)."""

    device_id: str
    time: dt.datetime
    value: float | None
    annunciations: str
    inserted_at: dt.datetime


_ROWS_SQL = {
    "postgresql": (
        "SELECT device_id, time, value, annunciations, inserted_at FROM cgm_readings "
        "WHERE patient_id = %(patient)s AND loinc = %(loinc)s AND time >= %(start)s AND "
        "time < %(end)s{devices} ORDER BY device_id, time, id"),
    "sqlite": (
        "SELECT device_id, time, value, annunciations, inserted_at FROM cgm_readings "
        "WHERE patient_id = ? AND loinc = ? AND time >= ? AND time < ?{devices} "
        "ORDER BY device_id, time, id"),
}
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def cgm_rows(conn: Connection, patient_id: str, start: dt.datetime, end: dt.datetime,
             device_ids: Sequence[str] | None = None) -> list[CgmRow]:
    """The patient's CGM readings with ``start <= time < end``, by device and time (driver
    SQL: hundreds of rows per search, no per-row type processing beyond the instants)."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    devices_list = list(device_ids) if device_ids is not None else []
    if conn.dialect.name == "postgresql":
        params: dict[str, Any] = {"patient": patient_id, "loinc": CGM_LOINC, "start": start,
                                  "end": end}
        cond = ""
        if device_ids is not None:
            cond = " AND device_id = ANY(%(devices)s)"
            params["devices"] = devices_list
        result = conn.exec_driver_sql(_ROWS_SQL["postgresql"].format(devices=cond), params)
        utc = dt.UTC
        return [CgmRow(r[0], r[1].astimezone(utc), r[2], r[3], r[4].astimezone(utc))
                for r in result.all()]
    cond = ""
    if device_ids is not None:
        cond = " AND device_id IN (" + ",".join("?" * len(devices_list)) + ")"
    result = conn.exec_driver_sql(_ROWS_SQL["sqlite"].format(devices=cond), (
        patient_id, CGM_LOINC, start.strftime(_SQLITE_TIME), end.strftime(_SQLITE_TIME),
        *devices_list))
    parse = dt.datetime.fromisoformat
    return [CgmRow(r[0], parse(r[1]).replace(tzinfo=dt.UTC), r[2], r[3],
                   parse(r[4]).replace(tzinfo=dt.UTC)) for r in result.all()]


#: The cell fingerprints, as driver SQL: run for every CGM search, so the statement is not
#: rebuilt (SQLAlchemy statement construction cost more than the query itself).
_CELLS_SQL = {
    "postgresql": (
        "SELECT device_id, floor(extract(epoch FROM time) / %(span)s)::bigint AS cell, "
        "count(*), max(inserted_at) FROM cgm_readings WHERE patient_id = %(patient)s AND "
        "loinc = %(loinc)s AND time >= %(start)s AND time < %(end)s "
        "GROUP BY device_id, cell"),
    # Naive UTC text; whole seconds only (SQLite's strftime rounds fractions up).
    "sqlite": (
        "SELECT device_id, CAST(strftime('%s', substr(time, 1, 19)) AS INTEGER) / ? AS cell, "
        "count(*), max(inserted_at) FROM cgm_readings WHERE patient_id = ? AND loinc = ? "
        "AND time >= ? AND time < ? GROUP BY device_id, cell"),
}


def cgm_cells(conn: Connection, patient_id: str, start: dt.datetime, end: dt.datetime,
              span_s: int) -> list[tuple[str, int, int, Any]]:
    """Per device and chunk cell in ``[start, end)``: the cell's index (epoch seconds //
    ``span_s``), its number of readings and their newest ``inserted_at`` (as the driver gives
    it). Rows are only ever inserted, so the count and that instant fingerprint a cell."""
    start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
    if conn.dialect.name == "postgresql":
        result = conn.exec_driver_sql(_CELLS_SQL["postgresql"], {
            "span": span_s, "patient": patient_id, "loinc": CGM_LOINC, "start": start,
            "end": end})
    else:  # the store keeps naive UTC text on SQLite
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        result = conn.exec_driver_sql(_CELLS_SQL["sqlite"], (
            span_s, patient_id, CGM_LOINC, start.strftime(fmt), end.strftime(fmt)))
    return [(r[0], int(r[1]), int(r[2]), r[3]) for r in result.all()]


GLUCOSE_COLUMNS = (glucose_readings.c.id, glucose_readings.c.device_id, glucose_readings.c.time,
                   glucose_readings.c.value, glucose_readings.c.sample_type,
                   glucose_readings.c.annunciations, glucose_readings.c.inserted_at)
