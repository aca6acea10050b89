"""CRC check values and the GATT Date Time value."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import TrailingBytes, TruncatedFrame, ValueOutOfRange
from bridge.protocols.crc import crc16_ccitt_false, crc16_mcrf4xx
from bridge.protocols.date_time import DateTime


def test_crc_check_values() -> None:
    # The catalogue check values for the nine ASCII digits.
    assert crc16_mcrf4xx(b"123456789") == 0x6F91
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_mcrf4xx(b"") == 0xFFFF
    assert crc16_ccitt_false(b"") == 0xFFFF


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_crc_can_be_continued(a: bytes, b: bytes) -> None:
    assert crc16_mcrf4xx(b, crc16_mcrf4xx(a)) == crc16_mcrf4xx(a + b)
    assert crc16_ccitt_false(b, crc16_ccitt_false(a)) == crc16_ccitt_false(a + b)


@given(st.binary(min_size=1, max_size=32), st.integers(0, 255), st.integers(0, 7))
def test_crc_detects_single_bit_errors(data: bytes, pos: int, bit: int) -> None:
    flipped = bytearray(data)
    flipped[pos % len(data)] ^= 1 << bit
    assert crc16_mcrf4xx(bytes(flipped)) != crc16_mcrf4xx(data)
    assert crc16_ccitt_false(bytes(flipped)) != crc16_ccitt_false(data)


def test_date_time_fields_and_unknown_parts() -> None:
    value = DateTime.from_bytes(bytes.fromhex("e8070511081e00"))
    assert value.to_datetime() == dt.datetime(2024, 5, 17, 8, 30, 0)
    unknown = DateTime.from_bytes(bytes.fromhex("00000000000000"))
    assert not unknown.is_complete
    with pytest.raises(ValueOutOfRange):
        unknown.to_datetime()
    with pytest.raises(ValueOutOfRange):
        DateTime.from_bytes(bytes.fromhex("e8070d11081e00"))  # month 13
    with pytest.raises(ValueOutOfRange):
        DateTime.from_bytes(bytes.fromhex("e807021e081e00")).to_datetime()  # 30 February
    with pytest.raises(TruncatedFrame):
        DateTime.from_bytes(bytes.fromhex("e8070511081e"))
    with pytest.raises(TrailingBytes):
        DateTime.from_bytes(bytes.fromhex("e8070511081e0000"))


@given(st.datetimes(min_value=dt.datetime(1582, 1, 1), max_value=dt.datetime(9999, 12, 31)))
def test_date_time_round_trip(value: dt.datetime) -> None:
    value = value.replace(microsecond=0)
    encoded = bytes(DateTime.from_datetime(value))
    assert DateTime.from_bytes(encoded).to_datetime() == value
