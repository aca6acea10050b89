"""Shared pieces of the edge tests: virtual BLE peripherals on an in-process bumble link and
the bridge's own drivers and GATT centrals connected to them.

Everything here goes through the project's BLE stack (``bridge.devices``): the profile
clients on the bumble GATT backend, the read-only guard in front of every write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from bumble.link import LocalLink

from bridge.devices.ble import open_ble_driver
from bridge.devices.device_information import BleDriver
from bridge.devices.gatt import READ_ONLY, WritePolicy
from bridge.devices.gatt_bumble import BumbleCentral
from bridge.records import (
    Annunciation,
    AnnunciationEvent,
    AnnunciationStatus,
    BasalRateChange,
    BloodGlucoseReading,
    BolusPhase,
    BolusType,
    CgmReading,
    DeviceInfo,
    DeviceKind,
    InsulinBolus,
    MealContext,
    OperationalState,
    OperationalStateChange,
    ReservoirLevel,
    SampleLocation,
    SampleType,
    TempBasalEnd,
    TempBasalStart,
    TempBasalType,
    TherapyState,
    TherapyStateChange,
    TotalDailyInsulin,
)
from simulators.ble.cgm_sensor import CgmSensorPeripheral
from simulators.ble.common import PeripheralConfig, SecurityConfig, VirtualPeripheral
from simulators.ble.glucose_meter import GlucoseMeterPeripheral
from simulators.ble.insulin_pump import InsulinPumpPeripheral, PumpConfig, PumpRecord
from simulators.faults import FaultConfig
from tests.devices.conftest import FakeNow, run

__all__ = ["CGM_ADDRESS", "METER_ADDRESS", "PUMP_ADDRESS", "SYSTEM_ID", "T0", "FakeNow",
           "ble_central", "ble_driver", "cgm_values", "info", "make_cgm", "make_meter",
           "make_pump", "meter_readings", "pump_history", "run"]

METER_ADDRESS = "F0:00:00:00:00:21"
CGM_ADDRESS = "F0:00:00:00:00:22"
PUMP_ADDRESS = "F0:00:00:00:00:23"
SYSTEM_ID = "0102030405060708"

#: True time at which the scenarios start.
T0 = dt.datetime(2027, 3, 1, 8, 0, tzinfo=dt.UTC)

#: Short timeouts keep failing tests fast; the links are in-process.
FAST: Mapping[str, Any] = {"timeout_s": 3.0, "connect_timeout_s": 5.0,
                           "procedure_timeout_s": 3.0, "backoff_initial_s": 0.05,
                           "connect_attempts": 2}


def info(device_id: str, kind: DeviceKind, *, system_id: str | None = SYSTEM_ID,
         serial: str | None = "SN-EDGE-1") -> DeviceInfo:
    return DeviceInfo(device_id=device_id, kind=kind, manufacturer="Example Medical",
                      model="VM-2", serial_number=serial, firmware_revision="2.0.1",
                      hardware_revision="C", software_revision="5.1", system_id=system_id)


def config(name: str, address: str, kind: DeviceKind, *, faults: FaultConfig | None = None,
           now: FakeNow | None = None, security: SecurityConfig | None = None,
           allow_time_write: bool = False, device_info: DeviceInfo | None = None
           ) -> PeripheralConfig:
    return PeripheralConfig(name=name, address=address,
                            info=device_info or info(f"{kind.value}-1", kind),
                            security=security or SecurityConfig(),
                            faults=faults or FaultConfig(), now=now or FakeNow(T0),
                            allow_time_write=allow_time_write)


# --- what the virtual devices are fed ----------------------------------------------------

def meter_readings(count: int, start: int = 0) -> list[BloodGlucoseReading]:
    """Readings 4 h apart: meal contexts, a control-solution test, an alternate site, a
    HI and a LO result, annunciations."""
    meals = (MealContext.FASTING, MealContext.POSTPRANDIAL, None, MealContext.BEDTIME)
    out = []
    for i in range(start, start + count):
        kwargs: dict[str, Any] = {"glucose_mg_dl": float(80 + (i * 37) % 150),
                                  "meal": meals[i % len(meals)]}
        if i % 7 == 3:
            kwargs.update(sample_type=SampleType.CONTROL_SOLUTION,
                          sample_location=SampleLocation.CONTROL_SOLUTION, meal=None)
        if i % 7 == 4:
            kwargs.update(sample_location=SampleLocation.ALTERNATE_SITE)
        if i % 11 == 5:
            kwargs.update(glucose_mg_dl=None,
                          annunciations=frozenset({Annunciation.RESULT_TOO_HIGH}))
        if i % 11 == 9:
            kwargs.update(glucose_mg_dl=None,
                          annunciations=frozenset({Annunciation.RESULT_TOO_LOW}))
        if i % 5 == 2:
            kwargs.update(annunciations=frozenset({Annunciation.BATTERY_LOW}))
        out.append(BloodGlucoseReading(device_id="meter-1",
                                       time=T0 + dt.timedelta(hours=4 * i, minutes=i % 13),
                                       **kwargs))
    return out


def cgm_values(count: int, start: int = 0) -> list[CgmReading]:
    return [CgmReading(device_id="cgm-1", time=T0 + dt.timedelta(minutes=5 * i),
                       glucose_mg_dl=float(100 + (i * 7) % 90),
                       trend_mg_dl_per_min=round(0.6 - 0.1 * (i % 5), 1),
                       quality_percent=float(90 + i % 10), session_start=T0,
                       time_offset_min=5 * i) for i in range(start, start + count)]


def pump_history() -> list[PumpRecord]:
    """Every kind of pump record, at whole seconds, with SFLOAT-exact amounts."""
    d = "pump-1"

    def at(minutes: float) -> dt.datetime:
        return T0 + dt.timedelta(minutes=minutes)

    return [
        ReservoirLevel(device_id=d, time=at(0), remaining_iu=180.0),
        TherapyStateChange(device_id=d, time=at(1), new_state=TherapyState.RUN,
                           previous_state=TherapyState.STOP),
        OperationalStateChange(device_id=d, time=at(1), new_state=OperationalState.READY,
                               previous_state=OperationalState.PRIMING),
        BasalRateChange(device_id=d, time=at(2), rate_iu_per_h=0.85),
        BasalRateChange(device_id=d, time=at(60), rate_iu_per_h=1.2,
                        previous_rate_iu_per_h=0.85),
        InsulinBolus(device_id=d, time=at(90), bolus_id=11, phase=BolusPhase.PROGRAMMED,
                     fast_iu=4.5),
        InsulinBolus(device_id=d, time=at(93), bolus_id=11, phase=BolusPhase.DELIVERED,
                     fast_iu=4.5),
        InsulinBolus(device_id=d, time=at(120), bolus_id=12, phase=BolusPhase.PROGRAMMED,
                     bolus_type=BolusType.MULTIWAVE, fast_iu=2.0, extended_iu=1.5,
                     extended_duration_min=60),
        InsulinBolus(device_id=d, time=at(180), bolus_id=12, phase=BolusPhase.DELIVERED,
                     bolus_type=BolusType.MULTIWAVE, fast_iu=2.0, extended_iu=1.5,
                     extended_duration_min=60),
        TempBasalStart(device_id=d, time=at(200), temp_basal_type=TempBasalType.RELATIVE,
                       value=70.0, duration_min=90),
        TempBasalEnd(device_id=d, time=at(290), effective_duration_min=90),
        TempBasalStart(device_id=d, time=at(300), temp_basal_type=TempBasalType.ABSOLUTE,
                       value=0.5, duration_min=30),
        TempBasalEnd(device_id=d, time=at(310), effective_duration_min=10, canceled=True),
        AnnunciationEvent(device_id=d, time=at(320), annunciation=Annunciation.RESERVOIR_LOW,
                          status=AnnunciationStatus.PENDING, instance_id=4),
        AnnunciationEvent(device_id=d, time=at(325), annunciation=Annunciation.RESERVOIR_LOW,
                          status=AnnunciationStatus.CONFIRMED, instance_id=4),
        AnnunciationEvent(device_id=d, time=at(330), annunciation=Annunciation.TEMPERATURE_TOO_LOW,
                          status=AnnunciationStatus.SNOOZED, instance_id=5),
        TotalDailyInsulin(device_id=d, time=at(16 * 60), day=dt.date(2027, 3, 1),
                          bolus_iu=8.0, basal_iu=14.25),
    ]


# --- peripherals ---------------------------------------------------------------------------

def make_meter(link: LocalLink, records: Sequence[BloodGlucoseReading] = (), *,
               faults: FaultConfig | None = None, now: FakeNow | None = None,
               security: SecurityConfig | None = None, allow_time_write: bool = False,
               device_info: DeviceInfo | None = None, **kwargs: Any) -> GlucoseMeterPeripheral:
    return GlucoseMeterPeripheral(
        config("Edge Meter", METER_ADDRESS, DeviceKind.BLOOD_GLUCOSE_METER, faults=faults,
               now=now or FakeNow(T0 + dt.timedelta(days=30)), security=security,
               allow_time_write=allow_time_write, device_info=device_info),
        link, records=records, **kwargs)


def make_cgm(link: LocalLink, records: Sequence[CgmReading] = (), *,
             faults: FaultConfig | None = None, now: FakeNow | None = None,
             e2e: bool = False, **kwargs: Any) -> CgmSensorPeripheral:
    return CgmSensorPeripheral(
        config("Edge CGM", CGM_ADDRESS, DeviceKind.CGM, faults=faults,
               now=now or FakeNow(T0 + dt.timedelta(hours=3))),
        link, records=records, e2e_crc=e2e, **kwargs)


def make_pump(link: LocalLink, records: Sequence[PumpRecord] = (), *,
              faults: FaultConfig | None = None, now: FakeNow | None = None,
              e2e: bool = False, allow_time_write: bool = False) -> InsulinPumpPeripheral:
    return InsulinPumpPeripheral(
        config("Edge Pump", PUMP_ADDRESS, DeviceKind.INSULIN_PUMP, faults=faults,
               now=now or FakeNow(T0 + dt.timedelta(days=1)),
               allow_time_write=allow_time_write),
        link, records=records, pump=PumpConfig(e2e=e2e, tick_interval_s=None))


# --- the bridge's side -------------------------------------------------------------------------

_PROFILE = {GlucoseMeterPeripheral: "glucose", CgmSensorPeripheral: "cgm",
            InsulinPumpPeripheral: "insulin-pump"}


@contextlib.asynccontextmanager
async def ble_driver(peripheral: VirtualPeripheral, link: LocalLink,
                     **options: Any) -> AsyncIterator[BleDriver]:
    """Start ``peripheral``, open the bridge's driver for it on ``link``; close both after."""
    driver: BleDriver | None = None
    try:
        await peripheral.start()
        opened = await open_ble_driver(_PROFILE[type(peripheral)], peripheral.config.address,
                                       backend="bumble", link=link,
                                       options={**FAST, **options})
        assert isinstance(opened, BleDriver)
        driver = opened
        yield driver
    finally:
        if driver is not None:
            await driver.close()
        await peripheral.stop()


@contextlib.asynccontextmanager
async def ble_central(peripheral: VirtualPeripheral, link: LocalLink, *,
                      policy: WritePolicy = READ_ONLY,
                      pair: bool = True) -> AsyncIterator[BumbleCentral]:
    """The bridge's bumble GATT central, connected, paired and discovered."""
    central: BumbleCentral | None = None
    try:
        await peripheral.start()
        central = await BumbleCentral.open(peripheral.config.address, link, policy=policy,
                                           timeout_s=3.0, connect_timeout_s=5.0)
        await central.connect()
        if pair:
            await central.pair()
        await central.discover()
        yield central
    finally:
        if central is not None:
            await central.close()
        await peripheral.stop()
