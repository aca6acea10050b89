"""The BLE profile clients against the virtual peripherals on an in-process bumble link.

Every test goes through the bridge's own stack: ``open_ble_driver`` → profile client →
bumble GATT central (with the read-only guard) → virtual meter, CGM or pump. What the
drivers return is compared with the canonical records the peripherals were fed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import pytest
from bumble.link import LocalLink

from bridge.devices.base import (
    ClockSource,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    SyncResult,
)
from bridge.devices.ble import PROFILES, ScanResult, open_ble_driver, scan_ble
from bridge.devices.cgm import CgmDriver, split_records
from bridge.devices.device_information import BleOptions, TransferInterrupted
from bridge.devices.gatt import AttError, Backoff, normalize_uuid, short_uuid
from bridge.devices.glucose import GlucoseMeterDriver
from bridge.devices.insulin_pump import InsulinPumpDriver
from bridge.protocols.cgms import CgmMeasurementRecord
from bridge.protocols.mder_float import SFloat
from bridge.records import (
    AnyRecord,
    BloodGlucoseReading,
    CgmReading,
    DeviceKind,
    OperationalState,
    Record,
    TherapyState,
)
from simulators.ble.cgm_sensor import StoredCgmValue
from simulators.ble.common import PairingMode, SecurityConfig
from simulators.faults import FaultConfig, FaultInjector
from tests.edge.conftest import (
    METER_ADDRESS,
    SYSTEM_ID,
    T0,
    FakeNow,
    ble_driver,
    cgm_values,
    info,
    make_cgm,
    make_meter,
    make_pump,
    meter_readings,
    pump_history,
    run,
)


def racp_writes(peripheral: Any, name: str = "racp") -> list[bytes]:
    return [w.value for w in peripheral.control_point_log if w.characteristic == name]


def same_reading(read: BloodGlucoseReading, fed: BloodGlucoseReading) -> None:
    assert read.glucose_mg_dl == fed.glucose_mg_dl
    assert read.meal == fed.meal
    assert read.sample_type == fed.sample_type
    assert read.sample_location == fed.sample_location
    assert read.annunciations == fed.annunciations
    assert read.device_time == fed.time.replace(tzinfo=None, microsecond=0)
    assert read.time == fed.time.replace(microsecond=0)


# --- glucose meter ------------------------------------------------------------------------------

def test_glucose_full_sync_then_incremental_reads_only_new_records() -> None:
    async def body() -> None:
        link = LocalLink()
        fed = meter_readings(15)
        meter = make_meter(link, fed[:12])
        async with ble_driver(meter, link) as driver:
            assert isinstance(driver, GlucoseMeterDriver)
            first = await driver.sync({})
            assert [r.sequence for r in first.records] == list(range(1, 13))
            for read, original in zip(first.records, fed, strict=False):
                assert isinstance(read, BloodGlucoseReading)
                same_reading(read, original)
                assert read.device_id == SYSTEM_ID
            assert first.state == {"last_sequence": 12}
            assert first.notices == ()
            assert first.info.device_id == SYSTEM_ID
            clock = first.clock
            assert clock is not None and clock.source is ClockSource.CURRENT_TIME
            assert clock.device_time == (T0 + dt.timedelta(days=30)).replace(tzinfo=None)
            assert clock.utc_offset == dt.timedelta(0)
            # The meter is asked for everything the first time, then for ≥ 13 only.
            assert bytes.fromhex("0101") in racp_writes(meter)

            for reading in fed[12:]:
                meter.add_record(reading)
            second = await driver.sync(first.state)
            assert [r.sequence for r in second.records] == [13, 14, 15]
            for read, original in zip(second.records, fed[12:], strict=True):
                assert isinstance(read, BloodGlucoseReading)
                same_reading(read, original)
            assert second.state == {"last_sequence": 15}
            reports = [w for w in racp_writes(meter) if w[0] == 1]
            assert reports == [bytes.fromhex("0101"), bytes.fromhex("0103010d00")]

            third = await driver.sync(second.state)
            assert third.records == () and third.state == second.state
            assert [w for w in racp_writes(meter) if w[0] == 1] == reports  # nothing asked

    run(body)


def test_glucose_context_is_merged_and_special_results_are_mapped() -> None:
    async def body() -> None:
        link = LocalLink()
        fed = meter_readings(12)
        meter = make_meter(link, fed, mmol_per_l=True)
        async with ble_driver(meter, link) as driver:
            result = await driver.sync({})
        readings = [r for r in result.records if isinstance(r, BloodGlucoseReading)]
        assert {r.sequence for r in readings if r.meal is not None} == {
            i + 1 for i, f in enumerate(fed) if f.meal is not None}
        control = [r for r in readings if r.is_control_solution]
        assert [r.sequence for r in control] == [4, 11]
        hi = next(r for r in readings if r.sequence == 6)
        assert hi.glucose_mg_dl is None and hi.above_range
        lo = next(r for r in readings if r.sequence == 10)
        assert lo.glucose_mg_dl is None and lo.below_range
        # mmol/L on the wire: 0.1 mmol/L resolution, converted back to mg/dL.
        for read, original in zip(readings, fed, strict=True):
            if original.glucose_mg_dl is not None:
                assert read.glucose_mg_dl is not None
                assert abs(read.glucose_mg_dl - original.glucose_mg_dl) <= 0.91

    run(body)


def test_glucose_sequence_reset_is_detected_and_everything_read_again() -> None:
    async def body() -> None:
        link = LocalLink()
        fed = meter_readings(9)
        meter = make_meter(link, fed[:6], faults=FaultConfig(sequence_reset_at_record=6))
        async with ble_driver(meter, link) as driver:
            first = await driver.sync({})
            assert first.state == {"last_sequence": 6}
            for reading in fed[6:]:
                meter.add_record(reading)  # the 7th clears the memory: numbers restart at 1
            second = await driver.sync(first.state)
        assert any("reset" in n for n in second.notices), second.notices
        assert [r.sequence for r in second.records] == [1, 2, 3]
        for read, original in zip(second.records, fed[6:], strict=True):
            assert isinstance(read, BloodGlucoseReading)
            same_reading(read, original)
        assert second.state == {"last_sequence": 3}

    run(body)


def test_glucose_disconnect_mid_transfer_keeps_state_then_recovers() -> None:
    async def body() -> None:
        link = LocalLink()
        fed = meter_readings(10)
        meter = make_meter(link, fed, faults=FaultConfig(disconnect_after_records=4))
        async with ble_driver(meter, link) as driver:
            state = {"last_sequence": 2}
            with pytest.raises(DeviceDisconnected) as lost:
                await driver.sync(state)
            assert isinstance(lost.value, TransferInterrupted)
            partial = lost.value.partial
            assert [r.sequence for r in partial.records] == [3, 4, 5, 6]
            assert partial.state == state  # not advanced over an incomplete transfer
            # The link is back on the next sync; the records are read again.
            meter.faults = FaultInjector(FaultConfig())
            result = await driver.sync(partial.state)
            assert [r.sequence for r in result.records] == list(range(3, 11))
            assert result.state == {"last_sequence": 10}

    run(body)


def test_glucose_timeouts_are_bounded() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = make_meter(link, meter_readings(3), faults=FaultConfig(response_delay_s=5.0))
        async with ble_driver(meter, link, timeout_s=0.3, procedure_timeout_s=0.3) as driver:
            started = time.monotonic()
            with pytest.raises(DeviceTimeout):
                await driver.sync({})
            assert time.monotonic() - started < 3.0
        meter = make_meter(link, meter_readings(3), faults=FaultConfig(drop_response_rate=1.0))
        async with ble_driver(meter, link, timeout_s=0.3, procedure_timeout_s=0.3) as driver:
            with pytest.raises(DeviceTimeout):
                await driver.sync({})

    run(body)


def test_a_procedure_left_running_is_aborted_before_the_next_sync() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = make_meter(link, meter_readings(4), faults=FaultConfig(response_delay_s=0.8))
        async with ble_driver(meter, link, timeout_s=0.3, procedure_timeout_s=0.3) as driver:
            with pytest.raises(DeviceTimeout):
                await driver.sync({})
            # The meter still works on the abandoned request and refuses a new one with
            # "procedure already in progress"; the driver aborts it and asks again.
            meter.faults = FaultInjector(FaultConfig())
            driver.options = dataclasses.replace(driver.options, procedure_timeout_s=3.0)
            result = await driver.sync({})
            assert [r.sequence for r in result.records] == [1, 2, 3, 4]
        assert bytes([3, 0]) in racp_writes(meter)  # the abort
        assert not [w for w in racp_writes(meter) if w[0] == 2]

    run(body)


def test_connecting_to_an_absent_device_fails_after_the_retries() -> None:
    async def body() -> None:
        link = LocalLink()
        driver = await open_ble_driver(
            "glucose", "F0:00:00:00:0E:EE", backend="bumble", link=link,
            options={"connect_timeout_s": 0.3, "connect_attempts": 2,
                     "backoff_initial_s": 0.05})
        started = time.monotonic()
        with pytest.raises(DeviceError):
            await driver.sync({})
        assert 0.6 <= time.monotonic() - started < 3.0
        await driver.close()
        await driver.close()  # closing twice is fine

    run(body)


def test_reconnects_after_the_device_dropped_the_link() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = make_meter(link, meter_readings(3))
        async with ble_driver(meter, link) as driver:
            first = await driver.sync({})
            await meter.disconnect(meter.connections[0])
            await driver.central.wait_disconnected(2.0)
            meter.add_record(meter_readings(4)[3])
            second = await driver.sync(first.state)
            assert [r.sequence for r in second.records] == [4]

    run(body)


def test_passkey_pairing() -> None:
    async def body() -> None:
        link = LocalLink()
        security = SecurityConfig(mode=PairingMode.PASSKEY, passkey=246810)
        meter = make_meter(link, meter_readings(2), security=security)
        async with ble_driver(meter, link, passkey=246810) as driver:
            result = await driver.sync({})
            assert len(result.records) == 2
        meter = make_meter(link, meter_readings(2), security=security)
        async with ble_driver(meter, link, passkey=111111) as driver:
            with pytest.raises(DeviceError, match="pairing"):
                await driver.sync({})
        # Without bonding the meter's secured characteristics stay closed (ATT 0x0F).
        meter = make_meter(link, meter_readings(2))
        async with ble_driver(meter, link, bond=False) as driver:
            with pytest.raises(AttError) as refused:
                await driver.sync({})
            assert refused.value.code == 0x0F

    run(body)


def test_device_identity_falls_back_from_system_id_to_serial_to_address() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = make_meter(link)
        async with ble_driver(meter, link) as driver:
            identity = await driver.read_info()
            assert identity.device_id == SYSTEM_ID == identity.system_id
            assert identity.serial_number == "SN-EDGE-1" and identity.model == "VM-2"
            assert identity.kind is DeviceKind.BLOOD_GLUCOSE_METER
            assert identity.transport == "ble" and identity.address == METER_ADDRESS
            assert await driver.read_battery() == 100
        meter = make_meter(link, device_info=info("x", DeviceKind.BLOOD_GLUCOSE_METER,
                                                  system_id=None))
        async with ble_driver(meter, link) as driver:
            assert (await driver.read_info()).device_id == "SN-EDGE-1"
        meter = make_meter(link, device_info=info("x", DeviceKind.BLOOD_GLUCOSE_METER,
                                                  system_id=None, serial=None))
        async with ble_driver(meter, link) as driver:
            assert (await driver.read_info()).device_id == METER_ADDRESS

    run(body)


def test_a_device_without_the_profile_service_is_refused() -> None:
    async def body() -> None:
        link = LocalLink()
        meter = make_meter(link)
        await meter.start()
        try:
            driver = await open_ble_driver("insulin-pump", METER_ADDRESS, backend="bumble",
                                           link=link, options={"connect_attempts": 3})
            with pytest.raises(DeviceError, match="0x183A"):
                await driver.sync({})
            await driver.close()
        finally:
            await meter.stop()

    run(body)


# --- CGM ----------------------------------------------------------------------------------------

def same_value(read: CgmReading, fed: CgmReading) -> None:
    assert read.time_offset_min == fed.time_offset_min
    assert read.glucose_mg_dl == fed.glucose_mg_dl
    assert read.trend_mg_dl_per_min == fed.trend_mg_dl_per_min
    assert read.quality_percent == fed.quality_percent
    assert read.session_start == T0
    assert read.time == fed.time
    assert read.device_time == fed.time.replace(tzinfo=None)


@pytest.mark.parametrize("e2e", [False, True], ids=["plain", "e2e"])
def test_cgm_backfill_then_incremental(e2e: bool) -> None:
    async def body() -> None:
        link = LocalLink()
        fed = cgm_values(15)
        cgm = make_cgm(link, fed[:12], e2e=e2e)
        async with ble_driver(cgm, link) as driver:
            assert isinstance(driver, CgmDriver)
            first = await driver.sync({})
            assert first.notices == ()
            assert [r.time_offset_min for r in first.records] == [5 * i for i in range(12)]
            for read, original in zip(first.records, fed, strict=False):
                assert isinstance(read, CgmReading)
                same_value(read, original)
            assert first.state == {"session_start": T0.isoformat(), "last_offset": 55}
            assert driver.session is not None and driver.session.e2e is e2e
            for value in fed[12:]:
                cgm.add_record(value)
            second = await driver.sync(first.state)
            assert [r.time_offset_min for r in second.records] == [60, 65, 70]
            assert second.state["last_offset"] == 70
            reports = [w for w in racp_writes(cgm) if w[0] == 1]
            assert reports == [bytes.fromhex("0101"), bytes.fromhex("0103013800")]

    run(body)


def test_cgm_bad_e2e_crc_rejects_that_record_only() -> None:
    async def body() -> None:
        link = LocalLink()
        fed = cgm_values(24)
        cgm = make_cgm(link, fed, e2e=True,
                       faults=FaultConfig(corrupt_frame_rate=0.25, seed=11))
        async with ble_driver(cgm, link) as driver:
            first = await driver.sync({})
            assert any("E2E-CRC" in n for n in first.notices), first.notices
            got = {r.time_offset_min for r in first.records}
            assert 0 < len(got) < 24
            by_offset = {v.time_offset_min: v for v in fed}
            for read in first.records:
                assert isinstance(read, CgmReading)
                assert read.time_offset_min is not None
                same_value(read, by_offset[read.time_offset_min])
            # The state stops before the first rejected value, so it is asked for again.
            missing = min(set(by_offset) - got)
            assert first.state.get("last_offset", -1) < missing
            cgm.faults = FaultInjector(FaultConfig())
            second = await driver.sync(first.state)
            assert got | {r.time_offset_min for r in second.records} == set(by_offset)
            assert second.state["last_offset"] == 115

    run(body)


def test_cgm_records_are_split_one_by_one() -> None:
    good = [bytes(CgmMeasurementRecord.create(SFloat.from_value(100 + i), 5 * i, e2e_crc=True))
            for i in range(3)]
    damaged = bytearray(good[1])
    damaged[3] ^= 0x10
    records, problems = split_records(good[0] + bytes(damaged) + good[2], True)
    assert [r.time_offset_minutes if r else None for r in records] == [0, None, 10]
    assert problems == ["CGM Measurement record rejected: E2E-CRC mismatch"]
    records, problems = split_records(good[0] + b"\x40\x00", True)
    assert records[-1] is None and "unreadable" in problems[0]


def test_cgm_live_values_and_backfill_after_a_gap() -> None:
    async def body() -> None:
        link = LocalLink()
        fed = cgm_values(20)
        now = FakeNow(T0 + dt.timedelta(hours=2))
        cgm = make_cgm(link, fed[:6], now=now)
        async with ble_driver(cgm, link) as driver:
            assert isinstance(driver, CgmDriver)
            results: asyncio.Queue[SyncResult] = asyncio.Queue()

            async def listen() -> None:
                async for result in driver.listen({}):
                    results.put_nowait(result)

            task = asyncio.create_task(listen())
            try:
                backfill = await asyncio.wait_for(results.get(), 5)
                assert [r.time_offset_min for r in backfill.records] == [0, 5, 10, 15, 20, 25]
                while not racp_writes(cgm, "socp"):  # the interval is asked for once
                    await asyncio.sleep(0.01)
                cgm.add_record(fed[6])
                live = await asyncio.wait_for(results.get(), 5)
                assert [r.time_offset_min for r in live.records] == [30]
                assert live.state["last_offset"] == 30
                # Two values stored but never notified (a lost notification), then a third:
                # the jump in Time Offset makes the driver backfill through the RACP.
                for value in fed[7:9]:
                    cgm.memory.append(StoredCgmValue(value.time_offset_min or 0, value))
                cgm.add_record(fed[9])
                gap = await asyncio.wait_for(results.get(), 5)
                assert [r.time_offset_min for r in gap.records] == [35, 40, 45]
                assert gap.state["last_offset"] == 45
                assert [w for w in racp_writes(cgm) if w[0] == 1][-1] == bytes.fromhex(
                    "0103011f00")
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert [w[0] for w in racp_writes(cgm, "socp")] == [2]  # GET interval, nothing else

    run(body)


def test_cgm_new_session_reads_all() -> None:
    async def body() -> None:
        link = LocalLink()
        cgm = make_cgm(link, cgm_values(5))
        async with ble_driver(cgm, link) as driver:
            old = {"session_start": "2027-02-01T08:00:00+00:00", "last_offset": 900}
            result = await driver.sync(old)
        assert any("new sensor session" in n for n in result.notices)
        assert len(result.records) == 5
        assert result.state == {"session_start": T0.isoformat(), "last_offset": 20}

    run(body)


def test_cgm_disconnect_mid_transfer() -> None:
    async def body() -> None:
        link = LocalLink()
        cgm = make_cgm(link, cgm_values(30), faults=FaultConfig(disconnect_after_records=8),
                       max_records_per_notification=4)
        async with ble_driver(cgm, link) as driver:
            with pytest.raises(TransferInterrupted) as lost:
                await driver.sync({})
            assert len(lost.value.partial.records) == 8
            assert lost.value.partial.state == {}

    run(body)


# --- insulin pump ------------------------------------------------------------------------------

def content(record: Record) -> Record:
    """A record without what the device adds (its identity and numbering)."""
    return dataclasses.replace(record, device_id="-", sequence=None,  # type: ignore[arg-type]
                               device_time=None)


def check_history(read: Sequence[AnyRecord], fed: Sequence[Record]) -> None:
    assert [content(r) for r in read] == [content(f) for f in fed]
    for r, f in zip(read, fed, strict=True):
        assert r.device_time == f.time.replace(tzinfo=None)
        assert r.time == f.time
        assert r.sequence is not None


@pytest.mark.parametrize("e2e", [False, True], ids=["plain", "e2e"])
def test_pump_history_becomes_the_records_it_was_fed(e2e: bool) -> None:
    async def body() -> None:
        link = LocalLink()
        history = pump_history()
        pump = make_pump(link, history[:12], e2e=e2e)
        async with ble_driver(pump, link) as driver:
            assert isinstance(driver, InsulinPumpDriver)
            first = await driver.sync({})
            check_history(first.records, history[:12])
            assert driver.e2e is e2e
            assert first.state["last_sequence"] == pump.events[-1].sequence_number
            status = driver.status
            assert status is not None and status.therapy is TherapyState.RUN
            assert status.operational is OperationalState.READY
            # Later events carry offsets from a Reference Time the incremental read does not
            # include: the driver keeps it in the state.
            pump.add_records(history[12:])
            second = await driver.sync(first.state)
            check_history(second.records, history[12:])
            assert second.state["reference"] == first.state["reference"]
            assert any("annunciation" in n for n in second.notices)
            third = await driver.sync(second.state)
            assert third.records == ()
        racp = racp_writes(pump)
        # Only report, count and abort were ever sent; nothing to the Command CP.
        assert {w[0] for w in racp} <= {0x33, 0x5A, 0x55}
        assert pump.command_writes == []

    run(body)


def test_pump_history_reset_is_detected() -> None:
    async def body() -> None:
        link = LocalLink()
        history = pump_history()
        pump = make_pump(link, history[:8], faults=FaultConfig(sequence_reset_at_record=8))
        async with ble_driver(pump, link) as driver:
            first = await driver.sync({})
            pump.add_records(history[8:11])
            second = await driver.sync(first.state)
        assert any("reset" in n for n in second.notices), second.notices
        check_history(second.records, history[8:11])

    run(body)


def test_pump_bad_e2e_crc_drops_events_and_holds_the_state() -> None:
    async def body() -> None:
        link = LocalLink()
        history = pump_history()
        pump = make_pump(link, history, e2e=True,
                         faults=FaultConfig(corrupt_frame_rate=0.3, seed=4))
        async with ble_driver(pump, link) as driver:
            first = await driver.sync({})
            assert any("CrcMismatch" in n for n in first.notices), first.notices
            assert len(first.records) < len(history)
            fed = [content(f) for f in history]
            assert all(content(r) in fed for r in first.records)
            pump.faults = FaultInjector(FaultConfig())
            second = await driver.sync(first.state)
        merged = {r.sequence: r for r in (*first.records, *second.records)}
        assert [content(r) for _, r in sorted(merged.items())] == fed

    run(body)


def test_pump_disconnect_mid_transfer() -> None:
    async def body() -> None:
        link = LocalLink()
        pump = make_pump(link, pump_history(), faults=FaultConfig(disconnect_after_records=5))
        async with ble_driver(pump, link) as driver:
            with pytest.raises(TransferInterrupted) as lost:
                await driver.sync({})
        assert lost.value.partial.state == {}
        assert 1 <= len(lost.value.partial.records) <= 5

    run(body)


# --- factory and scanning ---------------------------------------------------------------------

def test_scan_finds_the_profiles() -> None:
    async def body() -> None:
        link = LocalLink()
        devices = [make_meter(link), make_cgm(link), make_pump(link)]
        for device in devices:
            await device.start()
        try:
            found = await scan_ble(backend="bumble", link=link, timeout_s=0.4)
            only_cgm = await scan_ble(backend="bumble", link=link, timeout_s=0.3,
                                      profiles=["cgm"])
        finally:
            for device in devices:
                await device.stop()
        by_address = {r.address: r for r in found}
        assert {a: r.profiles for a, r in by_address.items()} == {
            d.config.address: (p,) for d, p in zip(devices, PROFILES, strict=True)}
        assert all(isinstance(r, ScanResult) and r.name for r in found)
        assert [r.profiles for r in only_cgm] == [("cgm",)]

    run(body)


def test_factory_validates_its_arguments() -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match="profile"):
            await open_ble_driver("scale", METER_ADDRESS, backend="bumble", link=LocalLink())
        with pytest.raises(ValueError, match="backend"):
            await open_ble_driver("glucose", METER_ADDRESS, backend="winrt")
        with pytest.raises(ValueError, match="transport"):
            await open_ble_driver("glucose", METER_ADDRESS, backend="bumble")
        with pytest.raises(ValueError, match="unknown BLE option"):
            await open_ble_driver("glucose", METER_ADDRESS, backend="bumble",
                                  link=LocalLink(), options={"allow_bolus": True})
        with pytest.raises(ValueError, match="wrong type"):
            await open_ble_driver("glucose", METER_ADDRESS, backend="bumble",
                                  link=LocalLink(), options={"allow_time_write": "yes"})
        with pytest.raises(ValueError, match="LocalLink"):
            await open_ble_driver("glucose", METER_ADDRESS, backend="bumble", link=object())

    run(body)


def test_options_from_configuration() -> None:
    opts = BleOptions.from_mapping({"timeout_s": 2, "passkey": 123, "adapter": "hci1",
                                    "connect_attempts": 5})
    assert opts.timeout_s == 2.0 and isinstance(opts.timeout_s, float)
    assert opts.backoff == Backoff(0.5, 2.0, 30.0, 5)
    assert BleOptions.from_mapping(None) == BleOptions()
    for bad in ({"timeout_s": True}, {"passkey": 1_000_000}, {"mtu": 10},
                {"connect_attempts": 0}, {"bond": 1}):
        with pytest.raises(ValueError):
            BleOptions.from_mapping(bad)


def test_backoff_delays() -> None:
    assert list(Backoff(0.5, 2.0, 3.0, 5).delays()) == [0.5, 1.0, 2.0, 3.0]
    assert list(Backoff(attempts=1).delays()) == []
    forever = Backoff(1.0, 2.0, 4.0, None).delays()
    assert [next(forever) for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_uuid_forms() -> None:
    assert normalize_uuid(0x2A52) == "00002a52-0000-1000-8000-00805f9b34fb"
    assert normalize_uuid("2A52") == normalize_uuid("0x2a52") == normalize_uuid(0x2A52)
    assert normalize_uuid("00002A52-0000-1000-8000-00805F9B34FB") == normalize_uuid(0x2A52)
    assert short_uuid("00002a52-0000-1000-8000-00805f9b34fb") == 0x2A52
    assert short_uuid("12345678-1234-5678-1234-567812345678") is None
