"""What the dashboard pages show, read from the backend store in one read-only transaction.

Each function takes a :class:`~sqlalchemy.engine.Connection` (from ``Store.read()``) and
returns plain values for the templates and the charts; none writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bridge.backend.store import (
    DeadLetter,
    IngestStatus,
    cgm_readings,
    devices,
    gateways,
    glucose_readings,
    ingest_status,
    insulin_events,
    list_dead_letters,
    patients,
)
from bridge.dashboard.stats import BasalEvent
from bridge.records import (
    BasalRateChange,
    BolusPhase,
    InsulinBolus,
    RecordKind,
    TempBasalEnd,
    TempBasalStart,
    TherapyStateChange,
    record_from_json,
)

#: Newest dead letters listed on the overview.
LATEST_DEAD_LETTERS = 10


@dataclass(frozen=True, slots=True)
class PatientRow:
    id: str
    display_name: str | None
    auto_provisioned: bool
    cgm_readings: int
    meter_readings: int
    insulin_events: int
    newest_reading: dt.datetime | None


@dataclass(frozen=True, slots=True)
class GatewayRow:
    id: str
    patient_id: str
    status: str
    status_at: dt.datetime | None
    last_contact: dt.datetime | None
    agent_version: str | None
    auto_provisioned: bool
    devices: int
    #: Records waiting in the agent's outbox, summed over the devices' last status messages
    #: (None: no device reported a queue).
    queued: int | None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    kind: str | None
    patient_id: str | None
    gateway_id: str | None
    manufacturer: str | None
    model: str | None
    serial_number: str | None
    status: str | None
    status_at: dt.datetime | None
    last_contact: dt.datetime | None
    last_sync: dt.datetime | None
    records_synced: int | None
    queued: int | None
    dropped: int | None
    errors: int | None
    last_error: str | None
    calibration_state: str | None


@dataclass(frozen=True, slots=True)
class Overview:
    patients: list[PatientRow]
    gateways: list[GatewayRow]
    devices: list[DeviceRow]
    ingest: IngestStatus
    dead_letters_total: int
    latest_dead_letters: list[DeadLetter]

    @property
    def agent_queue(self) -> int | None:
        """Records queued in all agents' outboxes, as last reported (None: not known)."""
        known = [g.queued for g in self.gateways if g.queued is not None]
        return sum(known) if known else None


def _per_patient(conn: Connection, table: sa.Table, patient_id: str | None = None
                 ) -> dict[str, tuple[int, dt.datetime | None]]:
    q = sa.select(table.c.patient_id, sa.func.count(), sa.func.max(table.c.time)).group_by(
        table.c.patient_id)
    if patient_id is not None:
        q = q.where(table.c.patient_id == patient_id)
    return {str(pid): (int(n), newest) for pid, n, newest in conn.execute(q)}


def overview(conn: Connection, now: dt.datetime) -> Overview:
    """Patients, gateways, devices and the pipeline's health."""
    patient_rows = patient_rows_with_counts(conn)
    device_rows = [DeviceRow(**{name: row[name] for name in DeviceRow.__dataclass_fields__})
                   for row in conn.execute(sa.select(devices).order_by(devices.c.id))
                   .mappings()]
    per_gateway: dict[str, list[DeviceRow]] = {}
    for d in device_rows:
        if d.gateway_id is not None:
            per_gateway.setdefault(d.gateway_id, []).append(d)
    gateway_rows = []
    for row in conn.execute(sa.select(gateways).order_by(gateways.c.id)).mappings():
        attached = per_gateway.get(row["id"], [])
        queues = [d.queued for d in attached if d.queued is not None]
        gateway_rows.append(GatewayRow(
            id=row["id"], patient_id=row["patient_id"], status=row["status"],
            status_at=row["status_at"], last_contact=row["last_contact"],
            agent_version=row["agent_version"], auto_provisioned=bool(row["auto_provisioned"]),
            devices=len(attached), queued=sum(queues) if queues else None))
    status = ingest_status(conn, now)
    return Overview(patients=patient_rows, gateways=gateway_rows, devices=device_rows,
                    ingest=status, dead_letters_total=sum(status.dead_letters_by_reason.values()),
                    latest_dead_letters=list_dead_letters(conn, limit=LATEST_DEAD_LETTERS))


# --- one patient's window --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GlucosePoint:
    time: dt.datetime
    mg_dl: float
    device_id: str


@dataclass(frozen=True, slots=True)
class Bolus:
    time: dt.datetime
    total_iu: float
    device_id: str


_BASAL_KINDS = (RecordKind.BASAL_RATE_CHANGE, RecordKind.TEMP_BASAL_START,
                RecordKind.TEMP_BASAL_END, RecordKind.THERAPY_STATE_CHANGE)


@dataclass(frozen=True, slots=True)
class PatientWindow:
    """One patient's data in ``start <= time < end``."""

    patient: PatientRow
    start: dt.datetime
    end: dt.datetime
    cgm: list[GlucosePoint]
    #: CGM readings in the window without a number (out of the sensor's range, warm-up, …).
    cgm_without_value: int
    meter: list[GlucosePoint]
    meter_without_value: int
    boluses: list[Bolus]
    #: Basal-relevant pump events in the window, plus the newest one of each kind before it
    #: (the state in force when the window opens).
    basal_events: list[BasalEvent]
    devices: list[DeviceRow]


def _glucose(conn: Connection, table: sa.Table, patient_id: str, start: dt.datetime,
             end: dt.datetime) -> tuple[list[GlucosePoint], int]:
    q = (sa.select(table.c.time, table.c.value, table.c.device_id)
         .where(table.c.patient_id == patient_id, table.c.time >= start, table.c.time < end)
         .order_by(table.c.time, table.c.id))
    points: list[GlucosePoint] = []
    missing = 0
    for time, value, device_id in conn.execute(q):
        if value is None:
            missing += 1
        else:
            points.append(GlucosePoint(time, float(value), device_id))
    return points, missing


def patient_window(conn: Connection, patient_id: str, start: dt.datetime,
                   end: dt.datetime) -> PatientWindow | None:
    """The patient's readings and insulin in the window (None: no such patient)."""
    found = patient_rows_with_counts(conn, patient_id)
    if not found:
        return None
    cgm, cgm_missing = _glucose(conn, cgm_readings, patient_id, start, end)
    meter, meter_missing = _glucose(conn, glucose_readings, patient_id, start, end)
    ev = insulin_events.c
    boluses = []
    for record_json in conn.execute(
            sa.select(ev.record).where(ev.patient_id == patient_id,
                                       ev.kind == RecordKind.INSULIN_BOLUS.value,
                                       ev.time >= start, ev.time < end)
            .order_by(ev.time, ev.id)).scalars():
        record = record_from_json(record_json)
        # A bolus is recorded when programmed and again when delivered (IDS history); the
        # delivered amount is what the patient got (less when the bolus was cancelled).
        if isinstance(record, InsulinBolus) and record.phase is BolusPhase.DELIVERED:
            boluses.append(Bolus(record.time, record.total_iu, record.device_id))
    basal: list[BasalEvent] = []
    kinds = [k.value for k in _BASAL_KINDS]
    for kind in kinds:
        before = conn.execute(
            sa.select(ev.record).where(ev.patient_id == patient_id, ev.kind == kind,
                                       ev.time < start)
            .order_by(ev.time.desc(), ev.id.desc()).limit(1)).scalar_one_or_none()
        if before is not None:
            basal.append(_basal_event(before))
    for record_json in conn.execute(
            sa.select(ev.record).where(ev.patient_id == patient_id, ev.kind.in_(kinds),
                                       ev.time >= start, ev.time < end)
            .order_by(ev.time, ev.id)).scalars():
        basal.append(_basal_event(record_json))
    basal.sort(key=lambda r: r.time)
    device_rows = [DeviceRow(**{name: row[name] for name in DeviceRow.__dataclass_fields__})
                   for row in conn.execute(sa.select(devices).where(
                       devices.c.patient_id == patient_id).order_by(devices.c.id)).mappings()]
    return PatientWindow(patient=found[0], start=start, end=end, cgm=cgm,
                         cgm_without_value=cgm_missing, meter=meter,
                         meter_without_value=meter_missing, boluses=boluses,
                         basal_events=basal, devices=device_rows)


def _basal_event(record_json: object) -> BasalEvent:
    record = record_from_json(record_json)  # type: ignore[arg-type]
    assert isinstance(record, BasalRateChange | TempBasalStart | TempBasalEnd
                      | TherapyStateChange)
    return record


def patient_rows_with_counts(conn: Connection, patient_id: str | None = None
                             ) -> list[PatientRow]:
    """Patients (all, or the one asked for) with their reading counts."""
    cgm = _per_patient(conn, cgm_readings, patient_id)
    meter = _per_patient(conn, glucose_readings, patient_id)
    insulin = _per_patient(conn, insulin_events, patient_id)
    q = sa.select(patients).order_by(patients.c.id)
    if patient_id is not None:
        q = q.where(patients.c.id == patient_id)
    rows = []
    for row in conn.execute(q).mappings():
        pid = row["id"]
        newest = [v[1] for v in (cgm.get(pid), meter.get(pid), insulin.get(pid))
                  if v is not None and v[1] is not None]
        rows.append(PatientRow(
            id=pid, display_name=row["display_name"],
            auto_provisioned=bool(row["auto_provisioned"]),
            cgm_readings=cgm.get(pid, (0, None))[0], meter_readings=meter.get(pid, (0, None))[0],
            insulin_events=insulin.get(pid, (0, None))[0],
            newest_reading=max(newest) if newest else None))
    return rows
