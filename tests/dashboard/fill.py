"""A backend store filled the way production fills it: simulated patients' device records,
gateway and device status and refused messages, all through the real ingest
(:class:`bridge.backend.ingest.IngestProcessor`), with no broker in between."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import cast

from bridge.backend import registry
from bridge.backend.ingest import Inbound, IngestProcessor
from bridge.backend.store import Store
from bridge.messages import (
    DeviceState,
    DeviceStatus,
    GatewayState,
    GatewayStatus,
    RecordsMessage,
    batches,
    device_status_topic,
    gateway_status_topic,
    records_topic,
)
from bridge.records import (
    AnyRecord,
    BloodGlucoseReading,
    BolusPhase,
    CgmReading,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    Record,
)
from simulators.physiology import standard_patient
from simulators.run import PatientDevices, simulate_cohort
from simulators.scenario import default_scenario

DAYS = 3
PATIENT = "p-0001"
GATEWAY = "pi-home-0001"
HOSTILE_PATIENT = "p-0002"
HOSTILE_GATEWAY = "pi-home-0002"
HOSTILE_NAME = "<script>alert('name')</script> & \"Eve\""
HOSTILE_MAKER = "<img src=x onerror=alert(1)>"
HOSTILE_ERROR = "<b>timeout</b> & <script>alert('error')</script>"
HOSTILE_TOPIC = "hddt/v1/gw/<script>alert('topic')</script>/records"
AGENT_VERSION = "0.1.0"
QUEUED = {"cgm": 12, "meter": 0, "pump": 3}


@dataclass(frozen=True, slots=True)
class Simulated:
    """What the simulator produced: the source of truth the pages are checked against."""

    devices: PatientDevices
    start: dt.datetime
    end: dt.datetime

    @property
    def records(self) -> list[Record]:
        return self.devices.records


@functools.cache
def simulated() -> Simulated:
    """One type 1 patient with pump, CGM and meter, :data:`DAYS` days (simulated once)."""
    result = simulate_cohort([standard_patient("adult#001")], default_scenario(), DAYS,
                             seed=7, records=True)
    assert result.devices is not None
    return Simulated(result.devices[0], result.start,
                     result.start + dt.timedelta(days=DAYS))


@dataclass(frozen=True, slots=True)
class Filled:
    sim: Simulated
    received_at: dt.datetime
    #: The clock the dashboard is given: the end of the simulated days.
    now: dt.datetime
    device_ids: dict[str, str]


def fill(store: Store) -> Filled:
    """Provision two patients, ingest the simulated records, status and bad messages."""
    sim = simulated()
    now = sim.end
    received = now - dt.timedelta(minutes=5)
    with store.begin() as conn:
        registry.provision_patient(conn, PATIENT, actor="test", display_name="Demo patient")
        registry.provision_gateway(conn, GATEWAY, patient_id=PATIENT, actor="test")
        registry.provision_patient(conn, HOSTILE_PATIENT, actor="test",
                                   display_name=HOSTILE_NAME)
        registry.provision_gateway(conn, HOSTILE_GATEWAY, patient_id=HOSTILE_PATIENT,
                                   actor="test")
    inbound: list[Inbound] = []
    ids: dict[str, str] = {}
    for name, log in (("pump", sim.devices.pump), ("cgm", sim.devices.cgm),
                      ("meter", sim.devices.meter)):
        assert log is not None
        ids[name] = log.info.device_id
        for batch in batches(cast(list[AnyRecord], log.records), 100):
            inbound.append(Inbound(records_topic(GATEWAY),
                                   RecordsMessage(GATEWAY, log.info, batch).to_bytes(),
                                   received))
        status = DeviceStatus(log.info.device_id, DeviceState.CONNECTED,
                              at=received - dt.timedelta(seconds=30),
                              last_sync=received - dt.timedelta(seconds=40),
                              records_synced=len(log.records), queued=QUEUED[name])
        inbound.append(Inbound(device_status_topic(GATEWAY, log.info.device_id),
                               status.to_bytes(), received))
    inbound.append(Inbound(gateway_status_topic(GATEWAY),
                           GatewayStatus(GATEWAY, GatewayState.ONLINE, at=received,
                                         agent_version=AGENT_VERSION).to_bytes(), received))
    # The second patient: a meter whose maker string is markup, with an error status.
    hostile = DeviceInfo(device_id="meter-hostile-1", kind=DeviceKind.BLOOD_GLUCOSE_METER,
                         manufacturer=HOSTILE_MAKER, model="</td></tr><tr><td>x")
    readings = tuple(BloodGlucoseReading(device_id=hostile.device_id, sequence=i,
                                         time=now - dt.timedelta(hours=3 * i + 1),
                                         glucose_mg_dl=100.0 + i) for i in range(1, 4))
    inbound.append(Inbound(records_topic(HOSTILE_GATEWAY),
                           RecordsMessage(HOSTILE_GATEWAY, hostile, readings).to_bytes(),
                           received - dt.timedelta(hours=2)))
    inbound.append(Inbound(device_status_topic(HOSTILE_GATEWAY, hostile.device_id),
                           DeviceStatus(hostile.device_id, DeviceState.ERROR,
                                        at=received - dt.timedelta(hours=2), errors=4,
                                        last_error=HOSTILE_ERROR).to_bytes(),
                           received - dt.timedelta(hours=2)))
    ids["hostile"] = hostile.device_id
    # Refused messages: they become dead letters.
    inbound.append(Inbound(records_topic(GATEWAY), b"this is not json", received))
    inbound.append(Inbound(HOSTILE_TOPIC, b"{}", received))
    outcome = IngestProcessor(store).ingest(inbound)
    assert outcome.inserted == len(sim.records) + len(readings)
    assert sum(outcome.dead_letters.values()) == 2
    return Filled(sim, received, now, ids)


def in_window(records: list[Record], start: dt.datetime, end: dt.datetime) -> list[Record]:
    return [r for r in records if start <= r.time < end]


def cgm_values(records: list[Record]) -> list[CgmReading]:
    return [r for r in records if isinstance(r, CgmReading) and r.glucose_mg_dl is not None]


def meter_values(records: list[Record]) -> list[BloodGlucoseReading]:
    return [r for r in records
            if isinstance(r, BloodGlucoseReading) and r.glucose_mg_dl is not None]


def delivered_boluses(records: list[Record]) -> list[InsulinBolus]:
    return [r for r in records
            if isinstance(r, InsulinBolus) and r.phase is BolusPhase.DELIVERED]
