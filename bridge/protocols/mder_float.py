"""IEEE 11073-20601 SFLOAT-Type (16 bit) and FLOAT-Type (32 bit).

Both are decimal floats: ``value = mantissa × 10^exponent`` with two's-complement fields
(SFLOAT: 4-bit exponent, 12-bit mantissa; FLOAT: 8-bit exponent, 24-bit mantissa).
IEEE 11073-20601 Annex F.8 reserves five mantissa values for NaN, NRes (not at this
resolution), ±INFINITY and a reserved code. Like the common Bluetooth parsers, a special
mantissa is treated as special whatever the exponent; the encoder only ever emits it with
exponent 0 and never produces such a mantissa for a finite value.

The value keeps its mantissa and exponent, so decode → encode is byte-exact
(``0xB05B`` = 91e-5 and ``0x005B`` = 91e0 are equal numbers but different frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import Enum
from typing import ClassVar, Self

from bridge.errors import TruncatedFrame, ValueOutOfRange
from bridge.protocols.codec import MessageCodec


class Special(Enum):
    """The reserved values of Annex F.8, by name."""

    NAN = "NaN"
    NRES = "NRes"
    POSITIVE_INFINITY = "+INF"
    NEGATIVE_INFINITY = "-INF"
    RESERVED = "reserved"


@dataclass(frozen=True, slots=True)
class _MderNumber:
    mantissa: int
    exponent: int

    MANTISSA_BITS: ClassVar[int]
    EXPONENT_BITS: ClassVar[int]
    SIZE: ClassVar[int]

    # Offsets from the most positive mantissa, per Annex F.8 (same pattern for both widths).
    @classmethod
    def _special_codes(cls) -> dict[int, Special]:
        top = (1 << (cls.MANTISSA_BITS - 1)) - 1  # 0x7FF / 0x7FFFFF
        return {
            top: Special.NAN,
            -(top + 1): Special.NRES,
            top - 1: Special.POSITIVE_INFINITY,
            -(top - 1): Special.NEGATIVE_INFINITY,
            -top: Special.RESERVED,
        }

    @classmethod
    def max_finite_mantissa(cls) -> int:
        return (1 << (cls.MANTISSA_BITS - 1)) - 3

    @classmethod
    def exponent_range(cls) -> tuple[int, int]:
        half = 1 << (cls.EXPONENT_BITS - 1)
        return -half, half - 1

    def __post_init__(self) -> None:
        half_m = 1 << (self.MANTISSA_BITS - 1)
        lo, hi = self.exponent_range()
        if not -half_m <= self.mantissa < half_m:
            raise ValueOutOfRange(
                f"{type(self).__name__} mantissa {self.mantissa} outside "
                f"[{-half_m}, {half_m - 1}]")
        if not lo <= self.exponent <= hi:
            raise ValueOutOfRange(
                f"{type(self).__name__} exponent {self.exponent} outside [{lo}, {hi}]")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def special_value(cls, special: Special) -> Self:
        code = {v: k for k, v in cls._special_codes().items()}[special]
        return cls(code, 0)

    @classmethod
    def from_value(cls, value: float | int | Decimal | str, *, precision: int | None = None,
                   exponent: int | None = None) -> Self:
        """Encode a number.

        ``precision`` is the number of decimal places to keep (negative for tens, hundreds);
        ``exponent`` fixes the exponent directly. Either way the mantissa is rounded
        half-to-even, and a value whose mantissa would not fit raises ``ValueOutOfRange``
        rather than silently losing the requested precision. With neither, the shortest
        decimal that represents the value is used, rounded only if the mantissa has no room.
        NaN and ±infinity map to their special values.
        """
        if isinstance(value, float):
            if math.isnan(value):
                return cls.special_value(Special.NAN)
            if math.isinf(value):
                return cls.special_value(
                    Special.POSITIVE_INFINITY if value > 0 else Special.NEGATIVE_INFINITY)
            dec = Decimal(repr(value))
        else:
            try:
                dec = Decimal(value)
            except InvalidOperation as exc:
                raise ValueOutOfRange(f"{value!r} is not a number") from exc
            if dec.is_nan():
                return cls.special_value(Special.NAN)
            if dec.is_infinite():
                return cls.special_value(
                    Special.POSITIVE_INFINITY if dec > 0 else Special.NEGATIVE_INFINITY)
        lo, hi = cls.exponent_range()
        limit = cls.max_finite_mantissa()
        if precision is not None or exponent is not None:
            exp = -precision if precision is not None else exponent
            assert exp is not None
            if not lo <= exp <= hi:
                raise ValueOutOfRange(f"exponent {exp} outside [{lo}, {hi}] for {cls.__name__}")
            mant = int(dec.scaleb(-exp).to_integral_value(ROUND_HALF_EVEN))
            if abs(mant) > limit:
                raise ValueOutOfRange(
                    f"{value} needs mantissa {mant} at exponent {exp}; "
                    f"{cls.__name__} holds at most ±{limit}")
            return cls(mant, exp)
        sign, digits, raw_exp = dec.normalize().as_tuple()
        assert isinstance(raw_exp, int)  # finite: NaN/inf were handled above
        exp = raw_exp
        mant = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        if mant == 0:
            return cls(0, 0)
        # Prefer no positive exponent for integers that fit (100 → 100e0, as meters send it).
        while exp > 0 and abs(mant * 10) <= limit:
            mant *= 10
            exp -= 1
        while exp < lo:
            exp += 1
            mant = int(Decimal(mant).scaleb(-1).to_integral_value(ROUND_HALF_EVEN))
        while abs(mant) > limit:
            exp += 1
            mant = int(Decimal(mant).scaleb(-1).to_integral_value(ROUND_HALF_EVEN))
        if exp > hi:
            raise ValueOutOfRange(f"{value} is too large for {cls.__name__}")
        return cls(mant, exp)

    # --- wire ---------------------------------------------------------------------------
    @classmethod
    def from_int(cls, raw: int) -> Self:
        mbits = cls.MANTISSA_BITS
        mant = raw & ((1 << mbits) - 1)
        if mant >= 1 << (mbits - 1):
            mant -= 1 << mbits
        exp = raw >> mbits
        if exp >= 1 << (cls.EXPONENT_BITS - 1):
            exp -= 1 << cls.EXPONENT_BITS
        return cls(mant, exp)

    def __int__(self) -> int:
        mbits = self.MANTISSA_BITS
        return ((self.exponent & ((1 << self.EXPONENT_BITS) - 1)) << mbits) | (
            self.mantissa & ((1 << mbits) - 1))

    @classmethod
    def from_bytes(cls, data: bytes, byteorder: str = "little") -> Self:
        if len(data) != cls.SIZE:
            raise TruncatedFrame(f"{cls.__name__} needs {cls.SIZE} bytes, got {len(data)}", data)
        return cls.from_int(int.from_bytes(data, "big" if byteorder == "big" else "little"))

    def to_bytes(self, byteorder: str = "little") -> bytes:
        return int(self).to_bytes(self.SIZE, "big" if byteorder == "big" else "little")

    def __bytes__(self) -> bytes:
        return self.to_bytes("little")

    # --- value --------------------------------------------------------------------------
    @property
    def special(self) -> Special | None:
        return self._special_codes().get(self.mantissa)

    @property
    def is_finite(self) -> bool:
        return self.special is None

    def to_decimal(self) -> Decimal:
        """The exact decimal value; raises ``ValueOutOfRange`` for special values."""
        if self.special is not None:
            raise ValueOutOfRange(f"{type(self).__name__} holds the special value "
                                  f"{self.special.value}, not a number")
        return Decimal(self.mantissa).scaleb(self.exponent)

    def __float__(self) -> float:
        special = self.special
        if special is Special.POSITIVE_INFINITY:
            return math.inf
        if special is Special.NEGATIVE_INFINITY:
            return -math.inf
        if special is not None:
            return math.nan
        return float(self.to_decimal())

    def to_json(self) -> float | int | str:
        """A number for finite values (exact decimal), the special's name otherwise."""
        if self.special is not None:
            return self.special.value
        d = self.to_decimal()
        return int(d) if d == d.to_integral_value() else float(d)

    def __str__(self) -> str:
        return self.special.value if self.special is not None else str(self.to_decimal())


@dataclass(frozen=True, slots=True)
class SFloat(_MderNumber):
    """SFLOAT-Type: 16 bits, exponent −8…7, finite mantissa ±2045."""

    MANTISSA_BITS: ClassVar[int] = 12
    EXPONENT_BITS: ClassVar[int] = 4
    SIZE: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class MderFloat(_MderNumber):
    """FLOAT-Type: 32 bits, exponent −128…127, finite mantissa ±8388605."""

    MANTISSA_BITS: ClassVar[int] = 24
    EXPONENT_BITS: ClassVar[int] = 8
    SIZE: ClassVar[int] = 4


def _decode_sfloat(data: bytes) -> SFloat:
    return SFloat.from_bytes(data)


def _decode_float(data: bytes) -> MderFloat:
    return MderFloat.from_bytes(data)


CODECS = (
    MessageCodec("sfloat", "IEEE 11073-20601 SFLOAT-Type, 2 bytes little-endian (GATT order)",
                 _decode_sfloat),
    MessageCodec("float", "IEEE 11073-20601 FLOAT-Type, 4 bytes little-endian (GATT order)",
                 _decode_float),
)
