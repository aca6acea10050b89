"""The virtual CGM sensor driven through CGMP by a plain bumble GATT central.

Notifications and control-point answers are decoded with the project's CGMS/RACP codecs and
compared with the canonical CGM values the sensor was fed.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from bumble.att import ATT_Error
from bumble.link import LocalLink

from bridge.errors import CrcMismatch, ProtocolError
from bridge.protocols import racp
from bridge.protocols.cgms import (
    CgmFeature,
    CgmFeatureBits,
    CgmMeasurement,
    CgmMeasurementRecord,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmSocp,
    CgmStatus,
    SensorStatusAnnunciation,
    SocpOpCode,
    SocpResponse,
    SocpResponseCode,
)
from bridge.protocols.mder_float import SFloat, Special
from bridge.protocols.racp import (
    RacpNumberOfRecords,
    RacpOpCode,
    RacpResponse,
    RacpResponseCode,
)
from bridge.records import Annunciation, CgmReading, DeviceKind
from simulators.ble.cgm_sensor import CgmSensorPeripheral
from simulators.ble.common import PeripheralConfig, SecurityConfig
from simulators.device_clock import DeviceClock
from simulators.faults import FaultConfig
from tests.devices.conftest import (
    T0,
    Central,
    FakeNow,
    device_info,
    drain,
    next_value,
    run,
    two_devices,
)

CGM = "F0:00:00:00:00:02"
MEAS, FEATURE, STATUS, SST, SRT, RACP, SOCP = (0x2AA7, 0x2AA8, 0x2AA9, 0x2AAA, 0x2AAB,
                                              0x2A52, 0x2AAC)


def values(n: int, start: int = 0) -> list[CgmReading]:
    return [CgmReading(device_id="cgm-1", time=T0 + dt.timedelta(minutes=5 * i),
                       glucose_mg_dl=100.0 + 3 * i, trend_mg_dl_per_min=0.6 - 0.1 * (i % 5),
                       quality_percent=90.0 + i % 10, session_start=T0,
                       time_offset_min=5 * i) for i in range(start, start + n)]


def sensor(records: list[CgmReading], link: LocalLink, *, e2e: bool = False,
           faults: FaultConfig | None = None, now: FakeNow | None = None,
           clock: DeviceClock | None = None, **kwargs: object) -> CgmSensorPeripheral:
    config = PeripheralConfig(name="CGM", address=CGM,
                              info=device_info("cgm-1", DeviceKind.CGM, "CGM42"),
                              security=SecurityConfig(), faults=faults or FaultConfig(),
                              now=now or FakeNow(T0 + dt.timedelta(hours=2)), clock=clock)
    return CgmSensorPeripheral(config, link, records=records, e2e_crc=e2e,
                               **kwargs)  # type: ignore[arg-type]


def decode(notifications: list[bytes], e2e: bool | None = None
           ) -> list[CgmMeasurementRecord]:
    return [rec for n in notifications for rec in CgmMeasurement.from_bytes(n, e2e).records]


def assert_matches(got: list[CgmMeasurementRecord], fed: list[CgmReading]) -> None:
    assert [r.time_offset_minutes for r in got] == [f.time_offset_min for f in fed]
    assert [r.glucose_mg_dl for r in got] == [round(f.glucose_mg_dl or 0) for f in fed]
    assert [r.trend_mg_dl_per_min for r in got] == [
        round(f.trend_mg_dl_per_min or 0, 1) for f in fed]
    assert [r.quality_percent for r in got] == [round(f.quality_percent or 0) for f in fed]


async def open_racp(central: Central) -> tuple[asyncio.Queue[bytes], asyncio.Queue[bytes]]:
    meas = await central.subscribe(MEAS)
    responses = await central.subscribe(RACP, indicate=True)
    return meas, responses


async def request(central: Central, queue: asyncio.Queue[bytes], value: bytes,
                  uuid: int = RACP) -> bytes:
    await central.write(uuid, value)
    return await next_value(queue)


def test_live_values_are_notified_to_a_subscribed_central() -> None:
    fed = values(3)

    async def body() -> None:
        link = LocalLink()
        s = sensor([], link)
        async with two_devices(s, link) as central:
            meas = await central.subscribe(MEAS)
            for reading in fed:
                s.add_record(reading)
                frame = await next_value(meas)
                assert len(CgmMeasurement.from_bytes(frame, False).records) == 1
                assert_matches(decode([frame], False), [reading])

    run(body)


def test_racp_backfill_by_time_offset_packs_several_records_per_notification() -> None:
    fed = values(30)

    async def body() -> None:
        link = LocalLink()
        async with two_devices(sensor(fed, link), link) as central:
            assert central.peer is not None
            await central.peer.request_mtu(247)
            meas, responses = await open_racp(central)
            response = await request(central, responses, bytes(racp.report_from_time_offset(50)))
            assert response == bytes(RacpResponse(RacpOpCode.REPORT_STORED_RECORDS,
                                                  RacpResponseCode.SUCCESS))
            notifications = await drain(meas, 0.1)
            per_notification = [len(CgmMeasurement.from_bytes(n).records)
                                for n in notifications]
            assert per_notification == [8, 8, 4]  # 20 records, at most 8 per notification
            assert_matches(decode(notifications), fed[10:])
            count = await request(central, responses, bytes(racp.count_all()))
            assert RacpNumberOfRecords.from_bytes(count).count == 30

    run(body)


def test_default_mtu_limits_records_per_notification() -> None:
    fed = values(5)

    async def body() -> None:
        link = LocalLink()
        async with two_devices(sensor(fed, link), link) as central:
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            notifications = await drain(meas, 0.1)
            # 10-byte records (trend and quality), 20 bytes of payload at ATT_MTU 23.
            assert [len(n) for n in notifications] == [20, 20, 10]
            assert_matches(decode(notifications), fed)

    run(body)


def test_values_missed_while_away_are_sent_on_resubscription() -> None:
    fed = values(8)

    async def body() -> None:
        link = LocalLink()
        s = sensor(fed[:2], link)
        await s.start()
        central = await Central.open(link)
        try:
            await central.connect(CGM)
            await central.pair()
            await central.discover()
            meas = await central.subscribe(MEAS)
            s.add_record(fed[2])
            assert_matches(decode([await next_value(meas)]), fed[2:3])
            assert central.connection is not None
            await central.connection.disconnect()
            await asyncio.wait_for(central.disconnected.wait(), 5)
            for reading in fed[3:]:
                s.add_record(reading)  # nobody to notify: kept for the bonded central
            await central.connect(CGM)
            await central.pair()
            await central.discover()
            assert central.peer is not None
            await central.peer.request_mtu(100)
            meas = await central.subscribe(MEAS)
            notifications = await drain(meas, 0.2)
            assert len(notifications) == 1  # the gap comes in one multi-record notification
            assert_matches(decode(notifications), fed[3:])
        finally:
            await central.close()
            await s.stop()

    run(body)


@pytest.mark.parametrize("e2e", [True, False])
def test_feature_status_session_characteristics_with_and_without_e2e_crc(e2e: bool) -> None:
    now = FakeNow(T0 + dt.timedelta(hours=3, minutes=7))
    clock = DeviceClock(epoch=T0, timezone="UTC+02:00")

    async def body() -> None:
        link = LocalLink()
        async with two_devices(sensor(values(4), link, e2e=e2e, now=now, clock=clock),
                               link) as central:
            feature = CgmFeature.from_bytes(await central.read(FEATURE))
            assert feature.e2e_crc_supported is e2e
            assert feature.features & CgmFeatureBits.CGM_TREND_INFORMATION
            assert feature.features & CgmFeatureBits.CGM_QUALITY
            raw_feature = await central.read(FEATURE)
            if not e2e:
                assert raw_feature[-2:] == b"\xff\xff"
            status = CgmStatus.from_bytes(await central.read(STATUS), e2e)
            assert status.e2e_crc is e2e
            assert status.time_offset_minutes == 187
            start = CgmSessionStartTime.from_bytes(await central.read(SST), e2e)
            assert (start.time_zone, int(start.dst_offset)) == (8, 0)
            assert start.start_time.to_datetime() == dt.datetime(2027, 3, 1, 10, 0)
            assert start.to_utc() == T0
            run_time = CgmSessionRunTime.from_bytes(await central.read(SRT), e2e)
            assert run_time.hours == 336
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            records = decode(await drain(meas, 0.1), e2e)
            assert [r.e2e_crc for r in records] == [e2e] * 4
            if e2e:
                with pytest.raises(ProtocolError):
                    decode([bytes(CgmMeasurementRecord.create(SFloat.from_value(1), 0))], True)

    run(body)


def test_socp_reads_are_answered_and_changes_are_accepted_and_logged() -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(2), link, e2e=True)
        async with two_devices(s, link) as central:
            socp = await central.subscribe(SOCP, indicate=True)

            async def ask(value: CgmSocp | bytes) -> CgmSocp:
                return CgmSocp.from_bytes(await request(central, socp, bytes(value), SOCP), True)

            reply = await ask(CgmSocp(SocpOpCode.GET_COMMUNICATION_INTERVAL, e2e_crc=True))
            assert (reply.op_code, reply.operand) == (
                SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE, 5)
            reply = await ask(CgmSocp(SocpOpCode.GET_HYPO_ALERT_LEVEL, e2e_crc=True))
            assert reply.op_code is SocpOpCode.HYPO_ALERT_LEVEL_RESPONSE
            assert float(reply.operand) == 55.0  # type: ignore[arg-type]
            set_interval = CgmSocp(SocpOpCode.SET_COMMUNICATION_INTERVAL, 1, e2e_crc=True)
            reply = await ask(set_interval)
            assert reply.operand == SocpResponse(SocpOpCode.SET_COMMUNICATION_INTERVAL,
                                                 SocpResponseCode.SUCCESS)
            stop = CgmSocp(SocpOpCode.STOP_SESSION, e2e_crc=True)
            assert await ask(stop) == CgmSocp(
                SocpOpCode.RESPONSE_CODE,
                SocpResponse(SocpOpCode.STOP_SESSION, SocpResponseCode.SUCCESS), True)
            status = CgmStatus.from_bytes(await central.read(STATUS), True)
            assert status.status & SensorStatusAnnunciation.SESSION_STOPPED
            calibration = CgmSocp(SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE, 0xFFFF, True)
            reply = await ask(calibration)
            assert reply.operand == SocpResponse(SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE,
                                                 SocpResponseCode.OP_CODE_NOT_SUPPORTED)
            reply = await ask(bytes([29]) + b"\x00\x00")
            assert reply.operand == SocpResponse(29, SocpResponseCode.OP_CODE_NOT_SUPPORTED)
            # E2E-CRC is mandatory on writes when supported (CGMS 1.0.1 §3.7).
            with pytest.raises(ATT_Error) as err:
                await central.write(SOCP, bytes([SocpOpCode.GET_COMMUNICATION_INTERVAL]))
            assert err.value.error_code == 0x80
            with pytest.raises(ATT_Error) as err:
                await central.write(SOCP, bytes([SocpOpCode.GET_COMMUNICATION_INTERVAL,
                                                 0x00, 0x00]))
            assert err.value.error_code == 0x81
            log = [(w.characteristic, w.value[0], w.accepted) for w in s.control_point_log]
            assert log == [
                ("socp", SocpOpCode.GET_COMMUNICATION_INTERVAL, True),
                ("socp", SocpOpCode.GET_HYPO_ALERT_LEVEL, True),
                ("socp", SocpOpCode.SET_COMMUNICATION_INTERVAL, True),
                ("socp", SocpOpCode.STOP_SESSION, True),
                ("socp", SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE, False),
                ("socp", 29, False),
                ("socp", SocpOpCode.GET_COMMUNICATION_INTERVAL, False),
                ("socp", SocpOpCode.GET_COMMUNICATION_INTERVAL, False),
            ]
            assert s.communication_interval_min == 1

    run(body)


def test_racp_errors_no_records_and_delete_for_cgm() -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(6), link)
        async with two_devices(s, link) as central:
            meas, responses = await open_racp(central)
            # GLS's user-facing-time filter type (0x02) does not exist in CGMS.
            response = await request(central, responses, bytes.fromhex("0103020000"))
            assert RacpResponse.from_bytes(response).response_code is (
                RacpResponseCode.OPERAND_NOT_SUPPORTED)
            response = await request(central, responses,
                                     bytes(racp.report_from_time_offset(1000)))
            assert RacpResponse.from_bytes(response).response_code is (
                RacpResponseCode.NO_RECORDS_FOUND)
            response = await request(central, responses, bytes.fromhex("0201"))
            assert RacpResponse.from_bytes(response) == RacpResponse(
                RacpOpCode.DELETE_STORED_RECORDS, RacpResponseCode.SUCCESS)
            assert RacpNumberOfRecords.from_bytes(
                await request(central, responses, bytes(racp.count_all()))).count == 0
            assert ("racp", bytes.fromhex("0201"), True) in [
                (w.characteristic, w.value, w.accepted) for w in s.control_point_log]
            assert await drain(meas, 0.05) == []

    run(body)


def test_out_of_range_values_carry_infinity_and_the_warning_bits() -> None:
    fed = [CgmReading(device_id="cgm-1", time=T0, glucose_mg_dl=None, session_start=T0,
                      time_offset_min=0,
                      annunciations=frozenset({Annunciation.ABOVE_DEVICE_RANGE})),
           CgmReading(device_id="cgm-1", time=T0 + dt.timedelta(minutes=5), glucose_mg_dl=None,
                      session_start=T0, time_offset_min=5,
                      annunciations=frozenset({Annunciation.BELOW_DEVICE_RANGE}))]

    async def body() -> None:
        link = LocalLink()
        async with two_devices(sensor(fed, link), link) as central:
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            hi, lo = decode(await drain(meas, 0.1))
            assert hi.glucose.special is Special.POSITIVE_INFINITY and hi.above_device_range
            assert lo.glucose.special is Special.NEGATIVE_INFINITY and lo.below_device_range

    run(body)


# --- faults ------------------------------------------------------------------------------

def test_fault_disconnect_mid_backfill() -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(20), link, faults=FaultConfig(disconnect_after_records=5))
        async with two_devices(s, link) as central:
            meas, _ = await open_racp(central)
            await central.write(RACP, bytes(racp.report_all()))
            await asyncio.wait_for(central.disconnected.wait(), 5)
            records = decode(await drain(meas, 0.1))
            assert [r.time_offset_minutes for r in records] == [0, 5, 10, 15, 20]

    run(body)


@pytest.mark.parametrize("e2e", [True, False])
def test_fault_corrupt_records_fail_their_check(e2e: bool) -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(3), link, e2e=e2e, faults=FaultConfig(corrupt_frame_rate=1.0))
        async with two_devices(s, link) as central:
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            notifications = await drain(meas, 0.1)
            assert notifications
            for n in notifications:
                with pytest.raises(CrcMismatch if e2e else ProtocolError):
                    CgmMeasurement.from_bytes(n, e2e)

    run(body)


def test_fault_missing_racp_response_times_out() -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(2), link, faults=FaultConfig(drop_response_rate=1.0))
        async with two_devices(s, link) as central:
            _, responses = await open_racp(central)
            await central.write(RACP, bytes(racp.count_all()))
            with pytest.raises(TimeoutError):
                await next_value(responses, 0.5)

    run(body)


def test_fault_duplicate_and_sequence_reset() -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(3), link, faults=FaultConfig(duplicate_record_rate=1.0))
        async with two_devices(s, link) as central:
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            offsets = [r.time_offset_minutes for r in decode(await drain(meas, 0.1))]
            assert offsets == [0, 0, 5, 5, 10, 10]
        link2 = LocalLink()
        fed = values(6)
        s2 = sensor(fed, link2, faults=FaultConfig(sequence_reset_at_record=4))
        async with two_devices(s2, link2) as central:
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            records = decode(await drain(meas, 0.1))
            assert [r.time_offset_minutes for r in records] == [0, 5]
            assert [r.glucose_mg_dl for r in records] == [round(f.glucose_mg_dl or 0)
                                                          for f in fed[4:]]
            start = CgmSessionStartTime.from_bytes(await central.read(SST))
            assert start.to_utc() == fed[4].time

    run(body)


def test_fault_clock_offset_shifts_the_session_start_time() -> None:
    async def body() -> None:
        link = LocalLink()
        s = sensor(values(2), link, faults=FaultConfig(clock_offset_s=-600))
        async with two_devices(s, link) as central:
            start = CgmSessionStartTime.from_bytes(await central.read(SST))
            assert start.to_utc() == T0 - dt.timedelta(minutes=10)

    run(body)


def test_fault_sensor_annunciations_and_low_battery() -> None:
    faults = FaultConfig(battery_low=True,
                         annunciations=frozenset({Annunciation.CALIBRATION_REQUIRED}))

    async def body() -> None:
        link = LocalLink()
        async with two_devices(sensor(values(2), link, faults=faults), link) as central:
            meas, responses = await open_racp(central)
            await request(central, responses, bytes(racp.report_all()))
            expected = (SensorStatusAnnunciation.DEVICE_BATTERY_LOW
                        | SensorStatusAnnunciation.CALIBRATION_REQUIRED)
            assert [r.annunciation for r in decode(await drain(meas, 0.1))] == [expected] * 2
            status = CgmStatus.from_bytes(await central.read(STATUS))
            assert status.status == expected
            assert (await central.read(0x2A19)) == b"\x05"

    run(body)
