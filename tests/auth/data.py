"""Glucose data for patients of a test store (a meter and a CGM per patient)."""

from __future__ import annotations

import datetime as dt

from bridge.backend import registry
from bridge.backend.store import Store, insert_rows, record_row
from bridge.records import BloodGlucoseReading, CgmReading, DeviceKind


def meter_id(patient: str) -> str:
    return f"meter-{patient}"


def cgm_id(patient: str) -> str:
    return f"cgm-{patient}"


def seed_glucose(store: Store, patient: str, *, value: float, now: dt.datetime,
                 meter_readings: int = 3, cgm_readings: int = 6) -> None:
    """``patient`` gets a gateway, a meter and a CGM, and readings of ``value`` mg/dL (the
    value tells the patients apart in what the FHIR API returns), in the last hours."""
    gateway = f"gw-{patient}"
    start = (now - dt.timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    with store.begin() as conn:
        registry.provision_gateway(conn, gateway, patient_id=patient, actor="test")
        registry.assign_device(conn, meter_id(patient), patient_id=patient, actor="test",
                               gateway_id=gateway, kind=DeviceKind.BLOOD_GLUCOSE_METER)
        registry.assign_device(conn, cgm_id(patient), patient_id=patient, actor="test",
                               gateway_id=gateway, kind=DeviceKind.CGM)
        records: list[BloodGlucoseReading | CgmReading] = [
            BloodGlucoseReading(device_id=meter_id(patient), sequence=i,
                                time=start + dt.timedelta(minutes=30 * i), glucose_mg_dl=value)
            for i in range(meter_readings)]
        records += [CgmReading(device_id=cgm_id(patient), sequence=i,
                               time=start + dt.timedelta(minutes=5 * i), glucose_mg_dl=value)
                    for i in range(cgm_readings)]
        for record in records:
            table, row = record_row(record, patient_id=patient, gateway_id=gateway,
                                    received_at=now, inserted_at=store.clock.now())
            insert_rows(conn, table, [row])
