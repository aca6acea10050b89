"""CGM Service codecs (CGMS 1.0.1): the tricky parts by example, and round trips by property."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (
    CrcMismatch,
    MalformedFrame,
    TrailingBytes,
    TruncatedFrame,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.cgms import (
    SOCP_READ_OP_CODES,
    SOCP_WRITE_OP_CODES,
    CalibrationStatus,
    CgmCalibrationRecord,
    CgmFeature,
    CgmFeatureBits,
    CgmMeasurement,
    CgmMeasurementFlags,
    CgmMeasurementRecord,
    CgmSampleLocation,
    CgmSampleType,
    CgmSessionRunTime,
    CgmSessionStartTime,
    CgmSocp,
    CgmStatus,
    DstOffset,
    SensorStatusAnnunciation,
    SocpOpCode,
    SocpResponse,
    SocpResponseCode,
    append_e2e_crc,
    check_e2e_crc,
    socp_write_is_read_only,
)
from bridge.protocols.codec import known
from bridge.protocols.date_time import DateTime
from bridge.protocols.mder_float import SFloat, Special

A = SensorStatusAnnunciation
F = CgmMeasurementFlags


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- E2E-CRC helper ------------------------------------------------------------------------


def test_e2e_crc_is_mcrf4xx_little_endian() -> None:
    assert append_e2e_crc(b"123456789") == b"123456789" + bytes([0x91, 0x6F])
    check_e2e_crc(b"123456789\x91\x6f", 0, 9)
    with pytest.raises(CrcMismatch) as info:
        check_e2e_crc(b"123456789\x6f\x91", 0, 9)
    assert (info.value.expected, info.value.received, info.value.offset) == (0x6F91, 0x916F, 9)
    with pytest.raises(TruncatedFrame):
        check_e2e_crc(b"123456789\x91", 0, 9)


# --- CGM Measurement ---------------------------------------------------------------------


def test_annunciation_octets_are_status_caltemp_warning_on_the_wire() -> None:
    rec = CgmMeasurementRecord.from_bytes(h("09 e0 7800 0000 01 02 04"))
    assert rec.annunciation == (A.SESSION_STOPPED | A.CALIBRATION_NOT_ALLOWED
                                | A.RESULT_LOWER_THAN_HYPO)


def test_a_lone_octet_takes_the_meaning_of_its_flag() -> None:
    warning = CgmMeasurementRecord.from_bytes(h("07 20 7800 0000 01"))
    assert warning.annunciation == A.RESULT_LOWER_THAN_PATIENT_LOW
    caltemp = CgmMeasurementRecord.from_bytes(h("07 40 7800 0000 01"))
    assert caltemp.annunciation == A.TIME_SYNCHRONIZATION_REQUIRED
    status = CgmMeasurementRecord.from_bytes(h("07 80 7800 0000 01"))
    assert status.annunciation == A.SESSION_STOPPED
    # Status and Warning present, Cal/Temp absent: the second octet is the Warning octet.
    both = CgmMeasurementRecord.from_bytes(h("08 a0 7800 0000 01 01"))
    assert both.annunciation == A.SESSION_STOPPED | A.RESULT_LOWER_THAN_PATIENT_LOW


def test_convenience_properties() -> None:
    rec = CgmMeasurementRecord.from_bytes(h("0d e3 d2f4 5a00 00 00 40 fbff 6400"))
    assert rec.glucose_mg_dl == pytest.approx(123.4)
    assert rec.time_offset == dt.timedelta(minutes=90)
    assert rec.trend_mg_dl_per_min == pytest.approx(-0.5)
    assert rec.quality_percent == 100
    assert rec.below_device_range and not rec.above_device_range
    high = CgmMeasurementRecord.from_bytes(h("07 20 fe07 1900 80"))
    assert high.above_device_range and not high.below_device_range
    assert high.glucose.special is Special.POSITIVE_INFINITY
    plain = CgmMeasurementRecord.from_bytes(h("06 00 7800 0500"))
    assert plain.trend_mg_dl_per_min is None and plain.quality_percent is None


def test_create_derives_flags_and_sends_only_non_empty_octets() -> None:
    rec = CgmMeasurementRecord.create(
        SFloat(120, 0), 5, annunciation=A.DEVICE_BATTERY_LOW | A.RATE_OF_INCREASE_EXCEEDED,
        trend=SFloat(15, -1))
    assert rec.flags == (F.STATUS_OCTET_PRESENT | F.WARNING_OCTET_PRESENT
                         | F.TREND_INFORMATION_PRESENT)
    assert bytes(rec) == h("0a a1 7800 0500 02 20 0f f0")
    with_crc = CgmMeasurementRecord.create(SFloat(120, 0), 5, e2e_crc=True)
    assert bytes(with_crc) == h("08 00 7800 0500 0de8")


def test_crc_mismatch_reports_values_and_offset() -> None:
    frame = h("06 00 7800 0000  08 00 7800 0500 e80d")
    with pytest.raises(CrcMismatch) as info:
        CgmMeasurement.from_bytes(frame)
    assert info.value.offset == 12
    assert info.value.expected == 0xE80D
    assert info.value.received == 0x0DE8


@pytest.mark.parametrize(("frame", "error", "offset"), [
    ("00 00 7800 0000", MalformedFrame, 0),
    ("05 00 7800 00", MalformedFrame, 0),
    ("0a 00 7800 0000", TruncatedFrame, 0),
    ("06 03 7800 0000 0200 6400", MalformedFrame, 0),
    ("07 00 7800 0000 00", MalformedFrame, 0),
    ("06 00 7800 0000 08 01 5a00", TruncatedFrame, 6),
    ("06 00 7800 0000 00", MalformedFrame, 6),
    ("", TruncatedFrame, 0),
])
def test_size_lies(frame: str, error: type[Exception], offset: int) -> None:
    with pytest.raises(error) as info:
        CgmMeasurement.from_bytes(h(frame))
    assert getattr(info.value, "offset", None) == offset


def test_e2e_parameter_overrides_inference() -> None:
    with_crc = h("08 00 7800 0500 0de8")
    without = h("06 00 7800 0500")
    assert CgmMeasurement.from_bytes(with_crc, e2e=True).records[0].e2e_crc
    assert not CgmMeasurement.from_bytes(without, e2e=False).records[0].e2e_crc
    with pytest.raises(MalformedFrame):
        CgmMeasurement.from_bytes(without, e2e=True)
    with pytest.raises(MalformedFrame):
        CgmMeasurement.from_bytes(with_crc, e2e=False)


def test_record_value_must_agree_with_its_flags() -> None:
    with pytest.raises(ValueOutOfRange):
        CgmMeasurementRecord(F(0), SFloat(1, 0), 0, trend=SFloat(1, 0))
    with pytest.raises(ValueOutOfRange):
        CgmMeasurementRecord(F.QUALITY_PRESENT, SFloat(1, 0), 0)
    with pytest.raises(ValueOutOfRange):
        CgmMeasurementRecord(F.STATUS_OCTET_PRESENT, SFloat(1, 0), 0,
                             annunciation=A.CALIBRATION_REQUIRED)
    with pytest.raises(ValueOutOfRange):
        CgmMeasurementRecord(F(0), SFloat(1, 0), 0x10000)
    with pytest.raises(ValueOutOfRange):
        CgmMeasurement(())
    with pytest.raises(ValueOutOfRange):
        CgmMeasurement((CgmMeasurementRecord(F(0), SFloat(1, 0), 0),
                        CgmMeasurementRecord(F(0), SFloat(1, 0), 0, e2e_crc=True)))


# --- Feature, Status, Session times -------------------------------------------------------


def test_feature_crc_field() -> None:
    plain = CgmFeature(CgmFeatureBits.CALIBRATION, CgmSampleType.INTERSTITIAL_FLUID,
                       CgmSampleLocation.SUBCUTANEOUS_TISSUE)
    assert bytes(plain) == h("01 00 00 59 ffff")
    assert not plain.e2e_crc_supported
    protected = CgmFeature(CgmFeatureBits.E2E_CRC | CgmFeatureBits.MULTIPLE_BOND
                           | CgmFeatureBits.MULTIPLE_SESSIONS | CgmFeatureBits.CGM_TREND_INFORMATION
                           | CgmFeatureBits.CGM_QUALITY, 9, 5)
    assert bytes(protected) == h("00 f0 01 59 8959")
    assert protected.e2e_crc_supported
    assert protected.sample_type is CgmSampleType.INTERSTITIAL_FLUID
    with pytest.raises(ValueOutOfRange):
        CgmFeature(CgmFeatureBits(0), 16, 1)


def test_status_e2e_parameter() -> None:
    assert CgmStatus.from_bytes(h("3c00 000000 6993"), e2e=True).e2e_crc
    with pytest.raises(TruncatedFrame):
        CgmStatus.from_bytes(h("3c00 000000"), e2e=True)
    with pytest.raises(TrailingBytes):
        CgmStatus.from_bytes(h("3c00 000000 6993"), e2e=False)
    status = CgmStatus.from_bytes(h("2301 010804"))
    assert status.time_offset == dt.timedelta(minutes=291)
    assert bytes(CgmStatus(291, A.SESSION_STOPPED, e2e_crc=True)) == append_e2e_crc(
        h("2301 010000"))


def test_session_start_time_to_and_from_utc() -> None:
    value = CgmSessionStartTime.from_bytes(h("e807 07 01 0e 05 09 04 04 d709"))
    # 14:05:09 local, UTC+1 standard plus 1 h daylight saving → 12:05:09 UTC.
    assert value.to_utc() == dt.datetime(2024, 7, 1, 12, 5, 9, tzinfo=dt.UTC)
    assert value.utc_offset == dt.timedelta(hours=2)
    again = CgmSessionStartTime.from_utc(dt.datetime(2024, 7, 1, 12, 5, 9, 999, tzinfo=dt.UTC),
                                         4, DstOffset.DAYLIGHT_TIME, e2e_crc=True)
    assert again == value
    assert bytes(again) == h("e807 07 01 0e 05 09 04 04 d709")
    west = CgmSessionStartTime.from_bytes(h("e707 0c 1f 00 00 00 ec 00"))
    assert west.to_utc() == dt.datetime(2023, 12, 31, 5, 0, 0, tzinfo=dt.UTC)
    other_zone = dt.datetime(2024, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert CgmSessionStartTime.from_utc(other_zone).start_time == DateTime(2024, 1, 1, 0, 0, 0)


@pytest.mark.parametrize("frame", [
    "e807 0b 1e 17 3b 3b 80 00",   # time zone unknown
    "e807 0b 1e 17 3b 3b 00 ff",   # DST unknown
    "e807 0b 1e 17 3b 3b 00 01",   # DST reserved
    "e807 0b 1e 17 3b 3b 39 00",   # time zone 57, beyond +14 h
    "0000 00 00 00 00 00 00 00",   # date not known
])
def test_to_utc_refuses_unknown_parts(frame: str) -> None:
    with pytest.raises(ValueOutOfRange):
        CgmSessionStartTime.from_bytes(h(frame)).to_utc()


def test_from_utc_needs_an_aware_known_offset() -> None:
    with pytest.raises(ValueOutOfRange):
        CgmSessionStartTime.from_utc(dt.datetime(2024, 1, 1))
    with pytest.raises(ValueOutOfRange):
        CgmSessionStartTime.from_utc(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), -128)
    with pytest.raises(ValueOutOfRange):
        CgmSessionStartTime.from_utc(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 0,
                                     DstOffset.UNKNOWN)


def test_run_time() -> None:
    value = CgmSessionRunTime.from_bytes(h("a800"))
    assert value.run_time == dt.timedelta(days=7)
    assert bytes(CgmSessionRunTime(336, e2e_crc=True)) == h("5001 c632")


# --- SOCP ----------------------------------------------------------------------------------


def test_socp_op_code_classes() -> None:
    writes = {1, 4, 7, 10, 13, 16, 19, 22, 25, 26, 27}
    reads = {2, 5, 8, 11, 14, 17, 20, 23}
    assert {int(op) for op in SOCP_WRITE_OP_CODES} == writes
    assert {int(op) for op in SOCP_READ_OP_CODES} == reads
    for op in SocpOpCode:
        assert op.changes_device == (op in writes)
        assert op.is_read_request == (op in reads)
    assert CgmSocp(SocpOpCode.STOP_SESSION).changes_device


def test_socp_write_allowlist_on_raw_frames() -> None:
    allowed = {first for first in range(256) if socp_write_is_read_only(bytes([first, 0xFF]))}
    assert allowed == {2, 5, 8, 11, 14, 17, 20, 23}
    assert not socp_write_is_read_only(b"")


def test_socp_operands_by_op_code() -> None:
    cal = CgmCalibrationRecord(SFloat(105, 0), 120, 2, 1, 840, 3,
                               CalibrationStatus.CALIBRATION_PROCESS_PENDING)
    assert bytes(CgmSocp(SocpOpCode.GLUCOSE_CALIBRATION_VALUE_RESPONSE, cal)) == h(
        "06 6900 7800 12 4803 0300 04")
    assert cal.sample_type is CgmSampleType.CAPILLARY_PLASMA
    assert bytes(CgmSocp(SocpOpCode.SET_RATE_OF_DECREASE_ALERT_LEVEL, SFloat(20, -1))) == h(
        "13 14f0")
    response = CgmSocp.from_bytes(h("1c 40 02")).operand
    assert isinstance(response, SocpResponse)
    assert response.request_op_code == 0x40 and not isinstance(response.request_op_code,
                                                                SocpOpCode)
    assert response.response_code is SocpResponseCode.OP_CODE_NOT_SUPPORTED
    assert not response.success
    for bad in [
        (SocpOpCode.GET_HYPO_ALERT_LEVEL, SFloat(1, 0)),
        (SocpOpCode.SET_HYPO_ALERT_LEVEL, None),
        (SocpOpCode.SET_COMMUNICATION_INTERVAL, 256),
        (SocpOpCode.SET_COMMUNICATION_INTERVAL, True),
        (SocpOpCode.SET_GLUCOSE_CALIBRATION_VALUE, 5),
        (SocpOpCode.RESPONSE_CODE, 1),
        (99, None),
    ]:
        with pytest.raises(ValueOutOfRange):
            CgmSocp(*bad)  # type: ignore[arg-type]


def test_socp_unknown_op_code_and_e2e() -> None:
    with pytest.raises(UnknownOpCode) as info:
        CgmSocp.from_bytes(h("1d"))
    assert info.value.offset == 0
    assert CgmSocp.from_bytes(h("1a 5cb0"), e2e=True).e2e_crc
    with pytest.raises(TruncatedFrame):
        CgmSocp.from_bytes(h("1a"), e2e=True)
    with pytest.raises(TrailingBytes):
        CgmSocp.from_bytes(h("1a 5cb0"), e2e=False)


def test_enum_or_int() -> None:
    assert known(DstOffset, 4) is DstOffset.DAYLIGHT_TIME
    assert type(known(DstOffset, 3)) is int


# --- round trips ---------------------------------------------------------------------------

sfloats = st.builds(SFloat.from_int, st.integers(0, 0xFFFF))
u16 = st.integers(0, 0xFFFF)
nibble = st.integers(0, 15)


@st.composite
def records(draw: st.DrawFn, e2e: bool | None = None) -> CgmMeasurementRecord:
    flags = F(draw(st.integers(0, 0xFF)))
    mask = 0
    for flag, shift in ((F.STATUS_OCTET_PRESENT, 0), (F.CAL_TEMP_OCTET_PRESENT, 8),
                        (F.WARNING_OCTET_PRESENT, 16)):
        if flags & flag:
            mask |= 0xFF << shift
    return CgmMeasurementRecord(
        flags, draw(sfloats), draw(u16), A(draw(st.integers(0, 0xFFFFFF)) & mask),
        draw(sfloats) if flags & F.TREND_INFORMATION_PRESENT else None,
        draw(sfloats) if flags & F.QUALITY_PRESENT else None,
        draw(st.booleans()) if e2e is None else e2e)


@st.composite
def measurements(draw: st.DrawFn) -> CgmMeasurement:
    e2e = draw(st.booleans())
    return CgmMeasurement(tuple(draw(st.lists(records(e2e), min_size=1, max_size=5))))


date_times = st.builds(DateTime, st.integers(1582, 9999), st.integers(0, 12),
                       st.integers(0, 31), st.integers(0, 23), st.integers(0, 59),
                       st.integers(0, 59))
calibrations = st.builds(CgmCalibrationRecord, sfloats, u16, nibble, nibble, u16, u16,
                         st.builds(CalibrationStatus, st.integers(0, 0xFF)))


def _operand(op: SocpOpCode) -> st.SearchStrategy[object]:
    probe = {
        SocpOpCode.SET_COMMUNICATION_INTERVAL: st.integers(0, 0xFF),
        SocpOpCode.COMMUNICATION_INTERVAL_RESPONSE: st.integers(0, 0xFF),
        SocpOpCode.SET_GLUCOSE_CALIBRATION_VALUE: calibrations,
        SocpOpCode.GLUCOSE_CALIBRATION_VALUE_RESPONSE: calibrations,
        SocpOpCode.GET_GLUCOSE_CALIBRATION_VALUE: u16,
        SocpOpCode.RESPONSE_CODE: st.builds(SocpResponse, st.integers(0, 0xFF),
                                            st.integers(0, 0xFF)),
    }
    if op in probe:
        return probe[op]
    if SocpOpCode.SET_PATIENT_HIGH_ALERT_LEVEL <= op <= 24 and (op - 7) % 3 != 1:
        return sfloats
    return st.none()


socps = st.sampled_from(list(SocpOpCode)).flatmap(
    lambda op: st.builds(CgmSocp, st.just(op), _operand(op), st.booleans()))

ROUND_TRIPS: list[tuple[st.SearchStrategy[object], object]] = [
    (records(), CgmMeasurementRecord.from_bytes),
    (measurements(), CgmMeasurement.from_bytes),
    (st.builds(CgmFeature, st.builds(CgmFeatureBits, st.integers(0, 0xFFFFFF)), nibble, nibble),
     CgmFeature.from_bytes),
    (st.builds(CgmStatus, u16, st.builds(A, st.integers(0, 0xFFFFFF)), st.booleans()),
     CgmStatus.from_bytes),
    (st.builds(CgmSessionStartTime, date_times, st.integers(-128, 127), st.integers(0, 255),
               st.booleans()), CgmSessionStartTime.from_bytes),
    (st.builds(CgmSessionRunTime, u16, st.booleans()), CgmSessionRunTime.from_bytes),
    (socps, CgmSocp.from_bytes),
]


@pytest.mark.parametrize(("strategy", "decode"), ROUND_TRIPS,
                         ids=[d.__qualname__ for _, d in ROUND_TRIPS])  # type: ignore[attr-defined]
def test_round_trip(strategy: st.SearchStrategy[object], decode: object) -> None:
    @given(strategy)
    def check(value: object) -> None:
        frame = bytes(value)  # type: ignore[call-overload]
        decoded = decode(frame)  # type: ignore[operator]
        assert decoded == value
        assert bytes(decoded) == frame

    check()


@given(measurements())
def test_measurement_decodes_with_the_known_e2e_setting(value: CgmMeasurement) -> None:
    e2e = value.records[0].e2e_crc
    assert CgmMeasurement.from_bytes(bytes(value), e2e=e2e) == value


@given(st.datetimes(min_value=dt.datetime(1600, 1, 2), max_value=dt.datetime(9998, 12, 30),
                    timezones=st.just(dt.UTC)),
       st.integers(-48, 56),
       st.sampled_from([d for d in DstOffset if d is not DstOffset.UNKNOWN]))
def test_session_start_utc_round_trip(when: dt.datetime, tz: int, dst: DstOffset) -> None:
    value = CgmSessionStartTime.from_utc(when, tz, dst)
    assert value.to_utc() == when.replace(microsecond=0)
