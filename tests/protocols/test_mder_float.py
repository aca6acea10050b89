"""SFLOAT/FLOAT: byte-exact decoding, special values both ways, precision-keeping encoding."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import TruncatedFrame, ValueOutOfRange
from bridge.protocols.mder_float import MderFloat, SFloat, Special


@pytest.mark.parametrize(
    ("hex_le", "value"),
    [
        ("5bb0", Decimal("0.00091")),   # 91 × 10^-5 kg/L = 91 mg/dL (GLS example)
        ("5b00", Decimal("91")),
        ("72f0", Decimal("11.4")),      # mantissa 114, exponent -1
        ("ff0f", Decimal("-1")),        # mantissa -1, exponent 0
        ("0070", Decimal("0")),         # zero with exponent 7 is still zero
        ("fd07", Decimal("2045")),      # largest finite mantissa
        ("0388", Decimal("-2045E-8")),  # most negative finite mantissa, smallest exponent
    ],
)
def test_sfloat_decodes_finite(hex_le: str, value: Decimal) -> None:
    f = SFloat.from_bytes(bytes.fromhex(hex_le))
    assert f.special is None
    assert f.to_decimal() == value
    assert bytes(f).hex() == hex_le


@pytest.mark.parametrize(
    ("raw", "special"),
    [(0x07FF, Special.NAN), (0x0800, Special.NRES), (0x07FE, Special.POSITIVE_INFINITY),
     (0x0802, Special.NEGATIVE_INFINITY), (0x0801, Special.RESERVED)],
)
def test_sfloat_special_values_both_ways(raw: int, special: Special) -> None:
    decoded = SFloat.from_int(raw)
    assert decoded.special is special
    assert int(SFloat.special_value(special)) == raw
    assert not decoded.is_finite
    with pytest.raises(ValueOutOfRange):
        decoded.to_decimal()


@pytest.mark.parametrize(
    ("raw", "special"),
    [(0x007FFFFF, Special.NAN), (0x00800000, Special.NRES),
     (0x007FFFFE, Special.POSITIVE_INFINITY), (0x00800002, Special.NEGATIVE_INFINITY),
     (0x00800001, Special.RESERVED)],
)
def test_float_special_values_both_ways(raw: int, special: Special) -> None:
    assert MderFloat.from_int(raw).special is special
    assert int(MderFloat.special_value(special)) == raw


def test_float_values() -> None:
    assert float(SFloat.special_value(Special.POSITIVE_INFINITY)) == math.inf
    assert float(SFloat.special_value(Special.NEGATIVE_INFINITY)) == -math.inf
    assert math.isnan(float(SFloat.special_value(Special.NRES)))
    assert SFloat.from_value(math.nan).special is Special.NAN
    assert SFloat.from_value(-math.inf).special is Special.NEGATIVE_INFINITY
    assert MderFloat.from_value(math.inf).special is Special.POSITIVE_INFINITY


def test_float32_big_endian_as_in_mder() -> None:
    f = MderFloat.from_bytes(bytes.fromhex("ff00007b"), "big")   # 123 × 10^-1
    assert f.to_decimal() == Decimal("12.3")
    assert f.to_bytes("big").hex() == "ff00007b"


def test_encoding_keeps_requested_precision() -> None:
    assert SFloat.from_value(5.55, precision=2) == SFloat(555, -2)
    assert SFloat.from_value(120, precision=0) == SFloat(120, 0)
    assert SFloat.from_value(0.00091, exponent=-5) == SFloat(91, -5)
    assert SFloat.from_value(1200, precision=-2) == SFloat(12, 2)
    with pytest.raises(ValueOutOfRange):
        SFloat.from_value(250.5, precision=1)   # 2505 does not fit 12 bits
    with pytest.raises(ValueOutOfRange):
        SFloat.from_value(1, exponent=8)


def test_encoding_without_precision_picks_shortest_then_rounds() -> None:
    assert SFloat.from_value(91) == SFloat(91, 0)
    assert SFloat.from_value(0.5) == SFloat(5, -1)
    assert SFloat.from_value(1 / 3) == SFloat(333, -3)
    assert MderFloat.from_value(1 / 3) == MderFloat(3333333, -7)
    assert SFloat.from_value(1_000_000) == SFloat(1000, 3)
    with pytest.raises(ValueOutOfRange):
        SFloat.from_value(1e12)


def test_construction_checks_field_widths() -> None:
    with pytest.raises(ValueOutOfRange):
        SFloat(2048, 0)
    with pytest.raises(ValueOutOfRange):
        SFloat(1, -9)
    with pytest.raises(TruncatedFrame):
        SFloat.from_bytes(b"\x01")
    with pytest.raises(ValueOutOfRange):
        SFloat.from_value("abc")


@given(st.integers(0, 0xFFFF))
def test_sfloat_every_16_bit_pattern_round_trips(raw: int) -> None:
    assert int(SFloat.from_int(raw)) == raw


@given(st.integers(0, 0xFFFFFFFF))
def test_float_every_32_bit_pattern_round_trips(raw: int) -> None:
    assert int(MderFloat.from_int(raw)) == raw


@given(st.integers(-2045, 2045), st.integers(-8, 7))
def test_sfloat_value_round_trip_through_decimal(mantissa: int, exponent: int) -> None:
    value = Decimal(mantissa).scaleb(exponent)
    encoded = SFloat.from_value(value, exponent=exponent)
    assert encoded.to_decimal() == value
    assert SFloat.from_bytes(bytes(encoded)) == encoded


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-2e9, max_value=2e9))
def test_sfloat_encoding_is_close(value: float) -> None:
    try:
        encoded = SFloat.from_value(value)
    except ValueOutOfRange:
        assert abs(value) > 2045 * 10**7 * 0.999
        return
    # When the mantissa overflows it is cut to >= 205 (2050 / 10), so the rounding error is at
    # most half a unit in 205: 0.25 %. Below 10^-8 the exponent floor rules.
    tolerance = max(abs(value) * 2.5e-3, 0.5e-8)
    assert abs(float(encoded) - value) <= tolerance
