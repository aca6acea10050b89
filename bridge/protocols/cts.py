"""Current Time Service (0x1805, CTS 1.1): Current Time and Local Time Information.

The characteristic values are built from nested GATT types (all little-endian):

* Day Date Time = Date Time (7 octets) + Day of Week (u8: 0 unknown, 1 Monday … 7 Sunday);
* Exact Time 256 = Day Date Time + Fractions256 (u8, 1/256 s);
* Current Time (0x2A2B, CTS 1.1 §3.1) = Exact Time 256 + Adjust Reason (u8 bit field);
* Local Time Information (0x2A0F, CTS 1.1 §3.2) = Time Zone (s8, 15-minute steps from UTC,
  −48…+56, −128 unknown) + DST Offset (u8, also in 15-minute steps: 0, 2, 4 or 8; 255
  unknown).

The value classes are flat (a Current Time has ``date_time``, ``day_of_week``,
``fractions256`` and ``adjust_reason``) so a simulator builds one in a single call; the
bytes are those of the nesting above. The bridge only ever reads the meter's clock: writing
Current Time is on the never-write list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Self

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import MessageCodec, known
from bridge.protocols.date_time import DateTime
from bridge.protocols.wire import Reader, Writer

CURRENT_TIME_SERVICE_UUID = 0x1805


class CtsCharacteristic(IntEnum):
    """16-bit UUIDs of the CTS characteristics used here."""

    LOCAL_TIME_INFORMATION = 0x2A0F
    CURRENT_TIME = 0x2A2B


class DayOfWeek(IntEnum):
    """Day of Week; 8–255 are reserved (kept as a plain int)."""

    UNKNOWN = 0
    MONDAY = 1
    TUESDAY = 2
    WEDNESDAY = 3
    THURSDAY = 4
    FRIDAY = 5
    SATURDAY = 6
    SUNDAY = 7


class AdjustReason(IntFlag):
    """Adjust Reason of the Current Time (CTS 1.1 §3.1); bits 4–7 are reserved (kept)."""

    MANUAL_TIME_UPDATE = 0x01
    EXTERNAL_REFERENCE_TIME_UPDATE = 0x02
    CHANGE_OF_TIME_ZONE = 0x04
    CHANGE_OF_DST = 0x08


NO_ADJUSTMENT = AdjustReason(0)


class DstOffset(IntEnum):
    """DST Offset in 15-minute steps, 255 = unknown; 1, 3, 5–7 and 9–254 are reserved."""

    STANDARD_TIME = 0
    HALF_AN_HOUR_DAYLIGHT_TIME = 2
    DAYLIGHT_TIME = 4
    DOUBLE_DAYLIGHT_TIME = 8
    UNKNOWN = 255


#: Time Zone value meaning "offset not known".
TIME_ZONE_UNKNOWN = -128





def _fractions_from_microseconds(microsecond: int) -> int:
    return microsecond * 256 // 1_000_000


def _microseconds_from_fractions(fractions256: int) -> int:
    # Rounded up so that converting back with _fractions_from_microseconds gives the same
    # fraction (1/256 s is 3906.25 µs).
    return -(-fractions256 * 1_000_000 // 256)


def _read_day_date_time(r: Reader) -> tuple[DateTime, DayOfWeek | int]:
    return DateTime.read(r), known(DayOfWeek, r.u8("day of week"))


@dataclass(frozen=True, slots=True)
class DayDateTime:
    """Day Date Time (8 octets): Date Time then Day of Week."""

    date_time: DateTime
    day_of_week: DayOfWeek | int = DayOfWeek.UNKNOWN

    def __post_init__(self) -> None:
        object.__setattr__(self, "day_of_week", known(DayOfWeek, self.day_of_week))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls(*_read_day_date_time(r))
        r.expect_end("Day Date Time")
        return value

    def write(self, w: Writer) -> None:
        self.date_time.write(w)
        w.u8(int(self.day_of_week), "day of week")

    def __bytes__(self) -> bytes:
        w = Writer()
        self.write(w)
        return bytes(w)

    @classmethod
    def from_datetime(cls, value: dt.datetime) -> Self:
        return cls(DateTime.from_datetime(value), DayOfWeek(value.isoweekday()))


@dataclass(frozen=True, slots=True)
class ExactTime256:
    """Exact Time 256 (9 octets): Day Date Time then Fractions256 (1/256 s)."""

    date_time: DateTime
    day_of_week: DayOfWeek | int = DayOfWeek.UNKNOWN
    fractions256: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "day_of_week", known(DayOfWeek, self.day_of_week))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        date_time, day_of_week = _read_day_date_time(r)
        value = cls(date_time, day_of_week, r.u8("fractions256"))
        r.expect_end("Exact Time 256")
        return value

    def write(self, w: Writer) -> None:
        DayDateTime(self.date_time, self.day_of_week).write(w)
        w.u8(self.fractions256, "fractions256")

    def __bytes__(self) -> bytes:
        w = Writer()
        self.write(w)
        return bytes(w)

    @classmethod
    def from_datetime(cls, value: dt.datetime) -> Self:
        return cls(DateTime.from_datetime(value), DayOfWeek(value.isoweekday()),
                   _fractions_from_microseconds(value.microsecond))

    def to_datetime(self) -> dt.datetime:
        """Naive wall-clock time including the fraction; ``ValueOutOfRange`` if unknown."""
        return self.date_time.to_datetime().replace(
            microsecond=_microseconds_from_fractions(self.fractions256))


@dataclass(frozen=True, slots=True)
class CurrentTime:
    """Current Time (0x2A2B, 10 octets, CTS 1.1 §3.1): Exact Time 256 + Adjust Reason."""

    date_time: DateTime
    day_of_week: DayOfWeek | int = DayOfWeek.UNKNOWN
    fractions256: int = 0
    adjust_reason: AdjustReason = NO_ADJUSTMENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "day_of_week", known(DayOfWeek, self.day_of_week))
        object.__setattr__(self, "adjust_reason", AdjustReason(self.adjust_reason))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        date_time, day_of_week = _read_day_date_time(r)
        value = cls(date_time, day_of_week, r.u8("fractions256"),
                    AdjustReason(r.u8("adjust reason")))
        r.expect_end("Current Time")
        return value

    def __bytes__(self) -> bytes:
        w = Writer()
        self.exact_time_256.write(w)
        w.u8(int(self.adjust_reason), "adjust reason")
        return bytes(w)

    @property
    def exact_time_256(self) -> ExactTime256:
        return ExactTime256(self.date_time, self.day_of_week, self.fractions256)

    @classmethod
    def from_datetime(cls, value: dt.datetime,
                      adjust_reason: AdjustReason = NO_ADJUSTMENT) -> Self:
        """The Current Time a device shows for a wall-clock ``datetime`` (time zone info, if
        any, is ignored: CTS carries local time; see :class:`LocalTimeInformation`)."""
        return cls(DateTime.from_datetime(value), DayOfWeek(value.isoweekday()),
                   _fractions_from_microseconds(value.microsecond), adjust_reason)

    def to_datetime(self) -> dt.datetime:
        return self.exact_time_256.to_datetime()


_DST_BY_DELTA = {
    dt.timedelta(0): DstOffset.STANDARD_TIME,
    dt.timedelta(minutes=30): DstOffset.HALF_AN_HOUR_DAYLIGHT_TIME,
    dt.timedelta(hours=1): DstOffset.DAYLIGHT_TIME,
    dt.timedelta(hours=2): DstOffset.DOUBLE_DAYLIGHT_TIME,
}


@dataclass(frozen=True, slots=True)
class LocalTimeInformation:
    """Local Time Information (0x2A0F, CTS 1.1 §3.2).

    ``time_zone`` is the standard-time offset from UTC in 15-minute steps, without DST
    (−48…+56, or −128 = unknown; other values are refused); ``dst_offset`` is added on top.
    """

    time_zone: int = TIME_ZONE_UNKNOWN
    dst_offset: DstOffset | int = DstOffset.UNKNOWN

    def __post_init__(self) -> None:
        if self.time_zone != TIME_ZONE_UNKNOWN and not -48 <= self.time_zone <= 56:
            raise ValueOutOfRange(f"time zone {self.time_zone} outside -48…56 (and not -128)")
        object.__setattr__(self, "dst_offset", known(DstOffset, self.dst_offset))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        time_zone = r.s8("time zone")
        if time_zone != TIME_ZONE_UNKNOWN and not -48 <= time_zone <= 56:
            raise ValueOutOfRange(f"time zone {time_zone} outside -48…56 (and not -128)",
                                  r.data, 0)
        value = cls(time_zone, r.u8("DST offset"))
        r.expect_end("Local Time Information")
        return value

    def __bytes__(self) -> bytes:
        return bytes(Writer().s8(self.time_zone, "time zone").u8(int(self.dst_offset),
                                                                 "DST offset"))

    @property
    def standard_offset(self) -> dt.timedelta | None:
        """UTC offset without DST, or ``None`` when unknown."""
        if self.time_zone == TIME_ZONE_UNKNOWN:
            return None
        return dt.timedelta(minutes=15 * self.time_zone)

    @property
    def dst(self) -> dt.timedelta | None:
        """The DST amount, or ``None`` when unknown or a reserved value."""
        if self.dst_offset == DstOffset.UNKNOWN or not isinstance(self.dst_offset, DstOffset):
            return None
        return dt.timedelta(minutes=15 * int(self.dst_offset))

    @property
    def utc_offset(self) -> dt.timedelta | None:
        """Local time minus UTC (time zone + DST), or ``None`` if either part is unknown."""
        std, dst = self.standard_offset, self.dst
        return None if std is None or dst is None else std + dst

    @classmethod
    def from_datetime(cls, value: dt.datetime) -> Self:
        """From an aware ``datetime``: its ``utcoffset()`` minus ``dst()`` as the time zone."""
        offset = value.utcoffset()
        if offset is None:
            return cls()
        dst = value.dst()
        dst_offset: DstOffset | int = (DstOffset.UNKNOWN if dst is None
                                       else _DST_BY_DELTA.get(dst, -1))
        if dst_offset == -1:
            raise ValueOutOfRange(f"DST of {dst} has no DST Offset code")
        std = offset - (dst or dt.timedelta(0))
        steps, rest = divmod(std, dt.timedelta(minutes=15))
        if rest:
            raise ValueOutOfRange(f"UTC offset {std} is not a multiple of 15 minutes")
        return cls(int(steps), dst_offset)


CODECS = (
    MessageCodec("cts-day-date-time", "Day Date Time (0x2A0A): Date Time + day of week",
                 DayDateTime.from_bytes),
    MessageCodec("cts-exact-time-256", "Exact Time 256 (0x2A0C): Day Date Time + 1/256 s",
                 ExactTime256.from_bytes),
    MessageCodec("cts-current-time", "CTS Current Time (0x2A2B): Exact Time 256 + adjust "
                 "reason", CurrentTime.from_bytes),
    MessageCodec("cts-local-time-information", "CTS Local Time Information (0x2A0F): time "
                 "zone + DST offset", LocalTimeInformation.from_bytes),
)
