"""The virtual glucose meter driven through GLP 1.0 by a plain bumble GATT central.

Every exchange is decoded with the project's codecs and compared with the canonical readings
the meter was fed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from decimal import Decimal

import pytest
from bumble.att import ATT_Error
from bumble.core import ProtocolError as BumbleProtocolError
from bumble.link import LocalLink

from bridge.errors import ProtocolError
from bridge.protocols import racp
from bridge.protocols.bas import BatteryLevel
from bridge.protocols.cts import CurrentTime
from bridge.protocols.date_time import DateTime
from bridge.protocols.dis import DisString, PnpId, SystemId
from bridge.protocols.gls import (
    GlucoseFeature,
    GlucoseFeatureFlags,
    GlucoseMeasurement,
    GlucoseMeasurementContext,
    GlucoseSampleType,
    Meal,
    SampleLocation,
    SensorStatusAnnunciation,
)
from bridge.protocols.mder_float import Special
from bridge.protocols.racp import (
    GlsFilterType,
    RacpFilter,
    RacpNumberOfRecords,
    RacpOpCode,
    RacpOperator,
    RacpRequest,
    RacpResponse,
    RacpResponseCode,
)
from bridge.records import (
    Annunciation,
    BloodGlucoseReading,
    DeviceKind,
    MealContext,
    SampleType,
)
from simulators.ble.common import PairingMode, PeripheralConfig, SecurityConfig
from simulators.ble.glucose_meter import GlucoseMeterPeripheral
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

METER = "F0:00:00:00:00:01"
GLS, MEAS, CTX, FEATURE, RACP = 0x1808, 0x2A18, 0x2A34, 0x2A51, 0x2A52
MEALS = {MealContext.FASTING: Meal.FASTING, MealContext.POSTPRANDIAL: Meal.POSTPRANDIAL,
         MealContext.PREPRANDIAL: Meal.PREPRANDIAL}


def readings(n: int, *, first_seq: int | None = 1) -> list[BloodGlucoseReading]:
    meals = [MealContext.FASTING, None, MealContext.POSTPRANDIAL, MealContext.PREPRANDIAL]
    return [BloodGlucoseReading(
        device_id="meter-1", time=T0 + dt.timedelta(hours=5 * i, minutes=7 * i),
        sequence=None if first_seq is None else first_seq + i,
        device_time=(T0 + dt.timedelta(hours=5 * i + 1, minutes=7 * i, seconds=11)
                     ).replace(tzinfo=None),
        glucose_mg_dl=80.0 + 13 * i, meal=meals[i % len(meals)]) for i in range(n)]


def meter(records: list[BloodGlucoseReading], link: LocalLink, *,
          faults: FaultConfig | None = None, security: SecurityConfig | None = None,
          now: FakeNow | None = None, clock: DeviceClock | None = None,
          **kwargs: object) -> GlucoseMeterPeripheral:
    config = PeripheralConfig(
        name="Meter", address=METER, info=device_info("meter-1", DeviceKind.BLOOD_GLUCOSE_METER),
        security=security or SecurityConfig(), faults=faults or FaultConfig(),
        now=now or FakeNow(), clock=clock)
    return GlucoseMeterPeripheral(config, link, records=records, **kwargs)  # type: ignore[arg-type]


class Session:
    """The GLP collector side: subscriptions on Measurement, Context and RACP."""

    def __init__(self, central: Central) -> None:
        self.central = central
        self.meas: asyncio.Queue[bytes] = asyncio.Queue()
        self.ctx: asyncio.Queue[bytes] = asyncio.Queue()
        self.racp: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    async def open(cls, central: Central) -> Session:
        s = cls(central)
        s.meas = await central.subscribe(MEAS)
        s.ctx = await central.subscribe(CTX)
        s.racp = await central.subscribe(RACP, indicate=True)
        return s

    async def request(self, request: RacpRequest | bytes, timeout_s: float = 5.0) -> bytes:
        await self.central.write(RACP, bytes(request))
        return await next_value(self.racp, timeout_s)

    async def report(self, request: RacpRequest | bytes | None = None
                     ) -> tuple[bytes, list[GlucoseMeasurement], list[GlucoseMeasurementContext]]:
        response = await self.request(racp.report_all() if request is None else request)
        meas = [GlucoseMeasurement.from_bytes(v) for v in await drain(self.meas, 0.1)]
        ctx = [GlucoseMeasurementContext.from_bytes(v) for v in await drain(self.ctx, 0.05)]
        return response, meas, ctx


def success(op: RacpOpCode = RacpOpCode.REPORT_STORED_RECORDS) -> bytes:
    return bytes(RacpResponse(op, RacpResponseCode.SUCCESS))


def assert_matches(got: list[GlucoseMeasurement], fed: list[BloodGlucoseReading]) -> None:
    assert [m.sequence_number for m in got] == [r.sequence for r in fed]
    assert [m.glucose_mg_dl() for m in got] == [Decimal(round(r.glucose_mg_dl or 0))
                                                 for r in fed]
    assert [m.time() for m in got] == [r.device_time for r in fed]


def test_report_all_after_just_works_bonding_returns_every_fed_reading() -> None:
    fed = readings(6)

    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(fed, link), link) as central:
            s = await Session.open(central)
            response, meas, ctx = await s.report()
            assert response == success()
            assert_matches(meas, fed)
            # A Context follows exactly the readings with a meal, with the same sequence.
            with_meal = [r for r in fed if r.meal is not None]
            assert [m.context_follows for m in meas] == [r.meal is not None for r in fed]
            assert [c.sequence_number for c in ctx] == [r.sequence for r in with_meal]
            assert [c.meal for c in ctx] == [MEALS[r.meal] for r in with_meal if r.meal]
            assert all(m.sample_type is GlucoseSampleType.CAPILLARY_WHOLE_BLOOD for m in meas)
            feature = GlucoseFeature.from_bytes(await central.read(FEATURE))
            assert feature.features & GlucoseFeatureFlags.SENSOR_RESULT_HIGH_LOW_DETECTION
            with pytest.raises(ATT_Error) as err:
                await central.read(MEAS)  # notify-only (GLS 1.0 §3.1)
            assert err.value.error_code == 0x02

    run(body)


def test_control_solution_hi_lo_and_annunciations_are_encoded_per_gls() -> None:
    base = dict(device_id="meter-1", device_time=dt.datetime(2027, 3, 1, 9, 0))
    fed = [
        BloodGlucoseReading(time=T0, sequence=1, glucose_mg_dl=101.0,
                            sample_type=SampleType.CONTROL_SOLUTION, **base),  # type: ignore[arg-type]
        BloodGlucoseReading(time=T0, sequence=2, glucose_mg_dl=None,
                            annunciations=frozenset({Annunciation.RESULT_TOO_HIGH}),
                            **base),  # type: ignore[arg-type]
        BloodGlucoseReading(time=T0, sequence=3, glucose_mg_dl=None,
                            annunciations=frozenset({Annunciation.RESULT_TOO_LOW}),
                            **base),  # type: ignore[arg-type]
        BloodGlucoseReading(time=T0, sequence=4, glucose_mg_dl=140.0,
                            annunciations=frozenset({Annunciation.STRIP_TYPE_INCORRECT}),
                            **base),  # type: ignore[arg-type]
    ]

    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(fed, link), link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            control, hi, lo, strip = meas
            assert control.sample_type is GlucoseSampleType.CONTROL_SOLUTION
            assert control.sample_location is SampleLocation.CONTROL_SOLUTION
            assert control.glucose_mg_dl() == 101
            assert control.sensor_status is None
            too_high = SensorStatusAnnunciation.RESULT_HIGHER_THAN_DEVICE_CAN_PROCESS
            assert hi.sensor_status == too_high
            assert hi.concentration is not None
            assert hi.concentration.special is Special.POSITIVE_INFINITY
            assert lo.sensor_status == SensorStatusAnnunciation.RESULT_LOWER_THAN_DEVICE_CAN_PROCESS
            assert lo.concentration is not None
            assert lo.concentration.special is Special.NEGATIVE_INFINITY
            assert strip.sensor_status == SensorStatusAnnunciation.STRIP_TYPE_INCORRECT

    run(body)


def test_mmol_per_l_meter_reports_mol_per_l() -> None:
    fed = readings(2)

    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(fed, link, mmol_per_l=True), link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert [m.concentration_mmol_l() for m in meas] == [Decimal("4.4"), Decimal("5.2")]

    run(body)


def test_passkey_bonding_then_read_and_wrong_passkey_is_refused() -> None:
    fed = readings(3)
    security = SecurityConfig(mode=PairingMode.PASSKEY, passkey=654321)

    async def body() -> None:
        link = LocalLink()
        m = meter(fed, link, security=security)
        async with two_devices(m, link) as central:
            assert central.connection is not None and central.connection.encryption
            s = await Session.open(central)
            response, meas, _ = await s.report()
            assert response == success()
            assert_matches(meas, fed)
        m2 = meter(fed, link, security=security)
        await m2.start()
        wrong = await Central.open(link, "C0:00:00:00:00:09",
                                   SecurityConfig(mode=PairingMode.PASSKEY, passkey=111111))
        try:
            await wrong.connect(METER)
            with pytest.raises(BumbleProtocolError, match="CONFIRM_VALUE_FAILED"):
                await wrong.connection.pair()  # type: ignore[union-attr]
            with pytest.raises(ATT_Error):
                await wrong.discover()
                await wrong.read(FEATURE)
        finally:
            await wrong.close()
            await m2.stop()

    run(body)


def test_unencrypted_link_cannot_read_glucose_data_but_can_read_dis_bas_cts() -> None:
    async def body() -> None:
        link = LocalLink()
        now = FakeNow()
        async with two_devices(meter(readings(2), link, now=now), link, pair=False) as central:
            with pytest.raises(ATT_Error) as err:
                await central.read(FEATURE)
            assert err.value.error_code == 0x0F  # Insufficient Encryption
            with pytest.raises(ATT_Error) as err:
                await central.subscribe(RACP, indicate=True)
            assert err.value.error_code == 0x0F
            assert DisString.from_bytes(await central.read(0x2A29)).value == "Example Medical"
            assert DisString.from_bytes(await central.read(0x2A25)).value == "SN0001"
            assert DisString.from_bytes(await central.read(0x2A26)).value == "1.2.3"
            assert SystemId.from_bytes(await central.read(0x2A23)).value == 0x0102030405060708
            assert PnpId.from_bytes(await central.read(0x2A50)).vendor_id == 0xFFFF
            assert BatteryLevel.from_bytes(await central.read(0x2A19)).percent == 100
            shown = CurrentTime.from_bytes(await central.read(0x2A2B)).to_datetime()
            assert shown == now().replace(tzinfo=None)

    run(body)


def test_device_clock_time_zone_and_current_time_write_refused_and_logged() -> None:
    now = FakeNow()
    clock = DeviceClock(epoch=T0, offset_s=90.0, timezone="UTC+01:00")

    async def body() -> None:
        link = LocalLink()
        m = meter(readings(1), link, now=now, clock=clock)
        async with two_devices(m, link) as central:
            shown = CurrentTime.from_bytes(await central.read(0x2A2B)).to_datetime()
            assert shown == dt.datetime(2027, 3, 1, 9, 1, 30)
            with pytest.raises(ATT_Error) as err:
                await central.write(0x2A2B, bytes(CurrentTime.from_datetime(shown)))
            assert err.value.error_code == 0x03  # Write Not Permitted
            assert [(w.characteristic, w.accepted) for w in m.control_point_log] == [
                ("current-time", False)]

    run(body)


def test_racp_filters_count_first_last_and_user_facing_time() -> None:
    fed = readings(8)

    def seq_filter(op: RacpOperator, lo: int | None = None, hi: int | None = None,
                   code: RacpOpCode = RacpOpCode.REPORT_STORED_RECORDS) -> RacpRequest:
        return RacpRequest(code, op, RacpFilter(GlsFilterType.SEQUENCE_NUMBER, lo, hi))

    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(fed, link), link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report(racp.report_from_sequence(5))
            assert_matches(meas, fed[4:])
            _, meas, _ = await s.report(seq_filter(RacpOperator.LESS_THAN_OR_EQUAL_TO, hi=3))
            assert_matches(meas, fed[:3])
            _, meas, _ = await s.report(seq_filter(RacpOperator.WITHIN_RANGE_OF, 3, 6))
            assert_matches(meas, fed[2:6])
            _, meas, _ = await s.report(RacpRequest(RacpOpCode.REPORT_STORED_RECORDS,
                                                    RacpOperator.FIRST_RECORD))
            assert_matches(meas, fed[:1])
            _, meas, _ = await s.report(racp.report_last())
            assert_matches(meas, fed[-1:])
            since = fed[5].device_time
            assert since is not None
            _, meas, _ = await s.report(RacpRequest(
                RacpOpCode.REPORT_STORED_RECORDS, RacpOperator.GREATER_THAN_OR_EQUAL_TO,
                RacpFilter(GlsFilterType.USER_FACING_TIME, DateTime.from_datetime(since))))
            assert_matches(meas, fed[5:])
            count = RacpNumberOfRecords.from_bytes(await s.request(racp.count_all()))
            assert count.count == 8
            count = RacpNumberOfRecords.from_bytes(await s.request(racp.count_from_sequence(7)))
            assert count.count == 2
            assert await drain(s.meas, 0.05) == []  # counting sends no records

    run(body)


def test_no_records_and_bad_requests_get_the_right_response_codes() -> None:
    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter([], link), link) as central:
            s = await Session.open(central)
            assert await s.request(racp.report_all()) == bytes(
                RacpResponse(RacpOpCode.REPORT_STORED_RECORDS, RacpResponseCode.NO_RECORDS_FOUND))
            cases = {
                b"\x01\x00": RacpResponseCode.INVALID_OPERATOR,
                b"\x01\x07": RacpResponseCode.OPERATOR_NOT_SUPPORTED,
                b"\x01\x03\x07\x01\x00": RacpResponseCode.OPERAND_NOT_SUPPORTED,
                b"\x01\x01\x05": RacpResponseCode.INVALID_OPERAND,
                b"\x09\x01": RacpResponseCode.OP_CODE_NOT_SUPPORTED,
            }
            for frame, code in cases.items():
                assert RacpResponse.from_bytes(await s.request(frame)) == RacpResponse(
                    frame[0], code), frame.hex()
            assert await drain(s.meas, 0.05) == []

    run(body)


def test_write_without_indications_enabled_is_an_att_error() -> None:
    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(readings(2), link), link) as central:
            await central.subscribe(MEAS)
            with pytest.raises(ATT_Error) as err:
                await central.write(RACP, bytes(racp.report_all()))
            assert err.value.error_code == 0xFD

    run(body)


def test_abort_stops_a_report_and_a_second_request_meanwhile_is_refused() -> None:
    fed = readings(40)

    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(fed, link, record_interval_s=0.02), link) as central:
            s = await Session.open(central)
            await central.write(RACP, bytes(racp.report_all()))
            await next_value(s.meas)
            with pytest.raises(ATT_Error) as err:
                await central.write(RACP, bytes(racp.count_all()))
            assert err.value.error_code == 0xFE  # Procedure Already In Progress
            await central.write(RACP, bytes(racp.abort()))
            assert await next_value(s.racp) == success(RacpOpCode.ABORT_OPERATION)
            received = 1 + len(await drain(s.meas, 0.15))
            assert 1 <= received < len(fed)
            assert await drain(s.racp, 0.05) == []  # no success for the aborted report
            # The meter is idle again.
            assert RacpNumberOfRecords.from_bytes(await s.request(racp.count_all())).count == 40

    run(body)


def test_delete_is_carried_out_and_logged() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(5), link)
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            delete = RacpRequest(RacpOpCode.DELETE_STORED_RECORDS,
                                 RacpOperator.LESS_THAN_OR_EQUAL_TO,
                                 RacpFilter(GlsFilterType.SEQUENCE_NUMBER, maximum=3))
            assert await s.request(delete) == success(RacpOpCode.DELETE_STORED_RECORDS)
            assert RacpNumberOfRecords.from_bytes(await s.request(racp.count_all())).count == 2
            log = [(w.characteristic, w.value, w.accepted) for w in m.control_point_log]
            assert log == [("racp", bytes(delete), True), ("racp", bytes(racp.count_all()), True)]

    run(body)


def test_memory_wraps_around_and_sequence_numbers_wrap_at_16_bits() -> None:
    fed = readings(8)
    tail = [dataclasses.replace(r, sequence=s) for r, s in zip(readings(2), (65534, 65535),
                                                               strict=True)]
    unnumbered = readings(2, first_seq=None)

    async def body() -> None:
        link = LocalLink()
        async with two_devices(meter(fed, link, capacity=5), link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert_matches(meas, fed[3:])
        link2 = LocalLink()
        async with two_devices(meter(tail + unnumbered, link2, capacity=5), link2) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert [m.sequence_number for m in meas] == [65534, 65535, 0, 1]

    run(body)


# --- faults, each observed from the collector's side -------------------------------------

def test_fault_disconnect_mid_transfer() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(10), link, faults=FaultConfig(disconnect_after_records=3))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            await central.write(RACP, bytes(racp.report_all()))
            await asyncio.wait_for(central.disconnected.wait(), 5)
            got = [GlucoseMeasurement.from_bytes(v) for v in await drain(s.meas, 0.1)]
            assert [g.sequence_number for g in got] == [1, 2, 3]
            assert await drain(s.racp, 0.05) == []

    run(body)


def test_fault_corrupt_frames_fail_to_decode() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(4), link, faults=FaultConfig(corrupt_frame_rate=1.0))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            assert await s.request(racp.report_all()) == success()
            frames = await drain(s.meas, 0.1)
            assert len(frames) == 4
            for frame in frames:
                with pytest.raises(ProtocolError):
                    GlucoseMeasurement.from_bytes(frame)

    run(body)


def test_fault_missing_response_makes_the_client_time_out() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(3), link, faults=FaultConfig(drop_response_rate=1.0))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            await central.write(RACP, bytes(racp.report_all()))
            with pytest.raises(TimeoutError):
                await next_value(s.racp, 0.5)
            assert len(await drain(s.meas, 0.05)) == 3  # the records came, the end did not

    run(body)


def test_fault_slow_response() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(1), link, faults=FaultConfig(response_delay_s=0.4))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            started = time.monotonic()
            assert RacpNumberOfRecords.from_bytes(await s.request(racp.count_all())).count == 1
            assert time.monotonic() - started >= 0.4

    run(body)


def test_fault_duplicate_records() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(3), link, faults=FaultConfig(duplicate_record_rate=1.0))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert [g.sequence_number for g in meas] == [1, 1, 2, 2, 3, 3]

    run(body)


def test_fault_sequence_reset_clears_memory_and_restarts_numbering() -> None:
    fed = readings(6, first_seq=40)

    async def body() -> None:
        link = LocalLink()
        m = meter(fed, link, faults=FaultConfig(sequence_reset_at_record=3))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert [g.sequence_number for g in meas] == [1, 2, 3]
            assert [g.glucose_mg_dl() for g in meas] == [Decimal(round(r.glucose_mg_dl or 0))
                                                         for r in fed[3:]]

    run(body)


def test_fault_clock_offset_and_clock_reset_shift_device_times() -> None:
    fed = readings(4)

    async def body() -> None:
        link = LocalLink()
        now = FakeNow()
        m = meter(fed, link, now=now, faults=FaultConfig(clock_offset_s=3600))
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert [g.time() - r.device_time for g, r in zip(meas, fed, strict=True)
                    if r.device_time] == [dt.timedelta(hours=1)] * 4
            shown = CurrentTime.from_bytes(await central.read(0x2A2B)).to_datetime()
            assert shown == now().replace(tzinfo=None) + dt.timedelta(hours=1)
        link2 = LocalLink()
        m2 = meter(fed, link2, faults=FaultConfig(clock_reset_at_record=2))
        async with two_devices(m2, link2) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert [g.time() for g in meas[:2]] == [r.device_time for r in fed[:2]]
            gap = fed[3].time - fed[2].time
            assert [g.time() for g in meas[2:]] == [dt.datetime(2000, 1, 1),
                                                     dt.datetime(2000, 1, 1) + gap]

    run(body)


def test_fault_low_battery_shows_in_level_and_annunciation() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(2), link, faults=FaultConfig(battery_low=True))
        async with two_devices(m, link) as central:
            assert BatteryLevel.from_bytes(await central.read(0x2A19)).percent == 5
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert all(g.sensor_status == SensorStatusAnnunciation.DEVICE_BATTERY_LOW
                       for g in meas)

    run(body)


def test_battery_level_change_is_notified() -> None:
    async def body() -> None:
        link = LocalLink()
        m = meter(readings(1), link)
        async with two_devices(m, link) as central:
            q = await central.subscribe(0x2A19)
            await m.set_battery_percent(42)
            assert BatteryLevel.from_bytes(await next_value(q)).percent == 42

    run(body)


def test_live_reading_added_while_connected_is_reported_on_the_next_request() -> None:
    fed = readings(3)

    async def body() -> None:
        link = LocalLink()
        m = meter(fed[:2], link)
        async with two_devices(m, link) as central:
            s = await Session.open(central)
            _, meas, _ = await s.report()
            assert_matches(meas, fed[:2])
            m.add_record(fed[2])
            assert await drain(s.meas, 0.1) == []  # a meter does not push on its own
            _, meas, _ = await s.report(racp.report_from_sequence(3))
            assert_matches(meas, fed[2:])

    run(body)
