"""Device Information, Battery and Current Time Service codecs."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import (
    MalformedFrame,
    ProtocolError,
    TrailingBytes,
    TruncatedFrame,
    ValueOutOfRange,
)
from bridge.protocols.bas import BatteryLevel
from bridge.protocols.cts import (
    AdjustReason,
    CurrentTime,
    DayDateTime,
    DayOfWeek,
    DstOffset,
    ExactTime256,
    LocalTimeInformation,
)
from bridge.protocols.date_time import DateTime
from bridge.protocols.dis import (
    STRING_CHARACTERISTICS,
    DisCharacteristic,
    DisString,
    PnpId,
    SystemId,
    VendorIdSource,
)

T = DateTime(2024, 5, 17, 8, 30, 0)
T_HEX = "e807 05 11 08 1e 00"

date_times = st.builds(
    DateTime, st.one_of(st.just(0), st.integers(1582, 9999)), st.integers(0, 12),
    st.integers(0, 31), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)


# --- DIS ----------------------------------------------------------------------------------


def test_dis_uuid_table() -> None:
    assert DisCharacteristic.MANUFACTURER_NAME_STRING == 0x2A29
    assert DisCharacteristic.MODEL_NUMBER_STRING == 0x2A24
    assert DisCharacteristic.SERIAL_NUMBER_STRING == 0x2A25
    assert DisCharacteristic.HARDWARE_REVISION_STRING == 0x2A27
    assert DisCharacteristic.FIRMWARE_REVISION_STRING == 0x2A26
    assert DisCharacteristic.SOFTWARE_REVISION_STRING == 0x2A28
    assert DisCharacteristic.SYSTEM_ID == 0x2A23
    assert DisCharacteristic.PNP_ID == 0x2A50
    assert len(STRING_CHARACTERISTICS) == 6


def test_dis_string_utf8() -> None:
    assert DisString.from_bytes("Müller".encode()) == DisString("Müller")
    assert bytes(DisString("Müller")) == bytes.fromhex("4d c3 bc 6c 6c 65 72")
    assert str(DisString("GM-100")) == "GM-100"


def test_dis_string_invalid_utf8_names_offset() -> None:
    with pytest.raises(MalformedFrame) as info:
        DisString.from_bytes(bytes.fromhex("41 42 ff 43"))
    assert info.value.offset == 2


def test_dis_string_unencodable_is_refused() -> None:
    with pytest.raises(ValueOutOfRange):
        bytes(DisString("\ud800"))


@given(st.text(max_size=40))
def test_dis_string_round_trip(text: str) -> None:
    try:
        value = DisString(text)
        data = bytes(value)
    except ValueOutOfRange:  # lone surrogates have no UTF-8 form
        return
    assert DisString.from_bytes(data) == value


@given(st.binary(max_size=40))
def test_dis_string_decodes_only_to_protocol_errors(data: bytes) -> None:
    try:
        value = DisString.from_bytes(data)
    except ProtocolError:
        return
    assert bytes(value) == data


def test_system_id_layout() -> None:
    value = SystemId.from_bytes(bytes.fromhex("de bc 9a fe ff 56 34 12"))
    assert value.manufacturer_identifier == 0xFFFE9ABCDE
    assert value.organizationally_unique_identifier == 0x123456
    assert value.value == 0x123456FFFE9ABCDE


def test_system_id_from_bluetooth_address() -> None:
    # OUI 0x123456, company-assigned 0x9ABCDE -> 0x123456FFFE9ABCDE.
    value = SystemId.from_bluetooth_address(0x1234569ABCDE)
    assert value.value == 0x123456FFFE9ABCDE
    assert bytes(value) == bytes.fromhex("de bc 9a fe ff 56 34 12")
    with pytest.raises(ValueOutOfRange):
        SystemId.from_bluetooth_address(1 << 48)


def test_system_id_ranges() -> None:
    with pytest.raises(ValueOutOfRange):
        SystemId(1 << 40, 0)
    with pytest.raises(ValueOutOfRange):
        SystemId(0, 1 << 24)
    with pytest.raises(TruncatedFrame):
        SystemId.from_bytes(bytes(7))
    with pytest.raises(TrailingBytes):
        SystemId.from_bytes(bytes(9))


@given(st.integers(0, (1 << 40) - 1), st.integers(0, (1 << 24) - 1))
def test_system_id_round_trip(ident: int, oui: int) -> None:
    value = SystemId(ident, oui)
    assert SystemId.from_bytes(bytes(value)) == value
    assert bytes(value) == value.value.to_bytes(8, "little")


def test_pnp_id() -> None:
    value = PnpId.from_bytes(bytes.fromhex("01 0d00 3412 0201"))
    assert value == PnpId(VendorIdSource.BLUETOOTH_SIG, 13, 0x1234, 0x0102)
    assert value.vendor_id_source is VendorIdSource.BLUETOOTH_SIG
    reserved = PnpId.from_bytes(bytes.fromhex("07 0000 0000 0000"))
    assert reserved.vendor_id_source == 7 and type(reserved.vendor_id_source) is int


@given(u8, u16, u16, u16)
def test_pnp_id_round_trip(source: int, vendor: int, product: int, version: int) -> None:
    value = PnpId(source, vendor, product, version)
    assert PnpId.from_bytes(bytes(value)) == value


# --- BAS ----------------------------------------------------------------------------------


@given(st.integers(0, 100))
def test_battery_level_round_trip(percent: int) -> None:
    assert BatteryLevel.from_bytes(bytes(BatteryLevel(percent))) == BatteryLevel(percent)


@pytest.mark.parametrize("raw", [101, 200, 255])
def test_battery_level_above_100_is_out_of_range(raw: int) -> None:
    with pytest.raises(ValueOutOfRange):
        BatteryLevel.from_bytes(bytes([raw]))
    with pytest.raises(ValueOutOfRange):
        BatteryLevel(raw)


# --- CTS ----------------------------------------------------------------------------------


def test_current_time_layout() -> None:
    data = bytes.fromhex(f"{T_HEX} 05 80 03")
    value = CurrentTime.from_bytes(data)
    assert value.date_time == T
    assert value.day_of_week is DayOfWeek.FRIDAY
    assert value.fractions256 == 128
    assert value.adjust_reason == (AdjustReason.MANUAL_TIME_UPDATE
                                   | AdjustReason.EXTERNAL_REFERENCE_TIME_UPDATE)
    assert value.exact_time_256 == ExactTime256(T, DayOfWeek.FRIDAY, 128)
    assert value.to_datetime() == dt.datetime(2024, 5, 17, 8, 30, 0, 500000)
    assert bytes(value) == data


def test_current_time_from_datetime() -> None:
    value = CurrentTime.from_datetime(dt.datetime(2024, 5, 17, 8, 30, 0, 500000),
                                      AdjustReason.MANUAL_TIME_UPDATE)
    assert bytes(value) == bytes.fromhex(f"{T_HEX} 05 80 01")
    assert CurrentTime.from_datetime(dt.datetime(2024, 5, 19, 0, 0)).day_of_week is (
        DayOfWeek.SUNDAY)


def test_current_time_nested_encodings_agree() -> None:
    value = CurrentTime(T, DayOfWeek.FRIDAY, 7, AdjustReason(0))
    assert bytes(value)[:9] == bytes(value.exact_time_256)
    assert bytes(value)[:8] == bytes(DayDateTime(T, DayOfWeek.FRIDAY))


@given(st.datetimes(min_value=dt.datetime(1582, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_current_time_datetime_round_trip_to_1_256_s(value: dt.datetime) -> None:
    ct = CurrentTime.from_datetime(value)
    back = ct.to_datetime()
    assert abs(back - value) < dt.timedelta(microseconds=3907)
    assert CurrentTime.from_datetime(back) == ct


@given(date_times, u8, u8, u8)
def test_current_time_round_trip(date_time: DateTime, day: int, fractions: int,
                                 reason: int) -> None:
    value = CurrentTime(date_time, day, fractions, AdjustReason(reason))
    assert CurrentTime.from_bytes(bytes(value)) == value
    assert ExactTime256.from_bytes(bytes(value.exact_time_256)) == value.exact_time_256
    ddt = DayDateTime(date_time, day)
    assert DayDateTime.from_bytes(bytes(ddt)) == ddt


def test_reserved_day_of_week_kept() -> None:
    value = DayDateTime.from_bytes(bytes.fromhex(f"{T_HEX} 09"))
    assert value.day_of_week == 9 and type(value.day_of_week) is int


def test_cts_errors() -> None:
    with pytest.raises(ValueOutOfRange):
        CurrentTime.from_bytes(bytes.fromhex("e807 0d 11 08 1e 00 05 00 00"))
    with pytest.raises(TruncatedFrame):
        CurrentTime.from_bytes(bytes.fromhex(f"{T_HEX} 05 00"))
    with pytest.raises(TrailingBytes):
        ExactTime256.from_bytes(bytes.fromhex(f"{T_HEX} 05 00 00"))


def test_local_time_information_offsets() -> None:
    cest = LocalTimeInformation.from_bytes(bytes.fromhex("04 04"))
    assert cest.dst_offset is DstOffset.DAYLIGHT_TIME
    assert cest.standard_offset == dt.timedelta(hours=1)
    assert cest.dst == dt.timedelta(hours=1)
    assert cest.utc_offset == dt.timedelta(hours=2)
    lord_howe = LocalTimeInformation(42, DstOffset.HALF_AN_HOUR_DAYLIGHT_TIME)
    assert lord_howe.utc_offset == dt.timedelta(hours=11)
    unknown = LocalTimeInformation()
    assert bytes(unknown) == bytes.fromhex("80 ff")
    assert unknown.utc_offset is None and unknown.standard_offset is None
    assert LocalTimeInformation(0, 1).dst is None  # reserved DST value


def test_local_time_information_from_aware_datetime() -> None:
    class Cest(dt.tzinfo):
        def utcoffset(self, _: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(hours=2)

        def dst(self, _: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(hours=1)

        def tzname(self, _: dt.datetime | None) -> str:
            return "CEST"

    value = LocalTimeInformation.from_datetime(dt.datetime(2024, 5, 17, tzinfo=Cest()))
    assert value == LocalTimeInformation(4, DstOffset.DAYLIGHT_TIME)
    fixed = LocalTimeInformation.from_datetime(
        dt.datetime(2024, 5, 17, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))))
    assert fixed == LocalTimeInformation(-14, DstOffset.UNKNOWN)
    assert LocalTimeInformation.from_datetime(dt.datetime(2024, 5, 17)) == LocalTimeInformation()
    with pytest.raises(ValueOutOfRange):
        LocalTimeInformation.from_datetime(
            dt.datetime(2024, 5, 17, tzinfo=dt.timezone(dt.timedelta(minutes=10))))


@pytest.mark.parametrize("tz", [-49, 57, 127, -127])
def test_time_zone_out_of_range(tz: int) -> None:
    with pytest.raises(ValueOutOfRange):
        LocalTimeInformation(tz, 0)
    with pytest.raises(ValueOutOfRange):
        LocalTimeInformation.from_bytes(tz.to_bytes(1, "little", signed=True) + b"\x00")


@given(st.one_of(st.just(-128), st.integers(-48, 56)), u8)
def test_local_time_information_round_trip(tz: int, dst: int) -> None:
    value = LocalTimeInformation(tz, dst)
    assert LocalTimeInformation.from_bytes(bytes(value)) == value
