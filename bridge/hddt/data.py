"""Read-only queries of the resource server on the backend store.

Few round trips per request: one query for the patient's devices with the times of their
first and newest readings (correlated subqueries on the ``(device_id, time)`` indexes), one
for the meter readings of a page (keyset, LIMIT) and one per window of CGM chunks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.backend.store import cgm_readings, devices, glucose_readings, insulin_events
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


def patient_devices(conn: Connection, patient_id: str) -> list[DeviceRow]:
    """Every device of the patient, oldest first."""
    def agg(fn: Any, table: sa.Table) -> Any:
        return (sa.select(fn(table.c.time)).where(table.c.device_id == devices.c.id)
                .scalar_subquery())

    q = (sa.select(devices.c.id, devices.c.kind, devices.c.manufacturer, devices.c.model,
                   devices.c.serial_number, devices.c.calibration_state,
                   devices.c.last_contact, devices.c.first_seen,
                   agg(sa.func.min, cgm_readings).label("first_cgm"),
                   agg(sa.func.max, cgm_readings).label("last_cgm"),
                   agg(sa.func.min, glucose_readings).label("first_bg"),
                   agg(sa.func.max, glucose_readings).label("last_bg"),
                   agg(sa.func.max, insulin_events).label("last_insulin"))
         .where(devices.c.patient_id == patient_id).order_by(devices.c.first_seen, devices.c.id))
    out = []
    for r in conn.execute(q):
        out.append(DeviceRow(
            id=r.id, key=fhir_device_key(r.id), kind=r.kind, manufacturer=r.manufacturer,
            model=r.model, serial_number=r.serial_number,
            calibration_state=r.calibration_state, last_contact=r.last_contact,
            first_seen=r.first_seen, first_cgm=_utc(r.first_cgm), last_cgm=_utc(r.last_cgm),
            first_bg=_utc(r.first_bg), last_bg=_utc(r.last_bg),
            last_insulin=_utc(r.last_insulin)))
    return out


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
