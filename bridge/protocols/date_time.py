"""The GATT Date Time characteristic value (0x2A08), used inside GLS, CGMS and CTS payloads.

Seven octets: year (uint16, 1582…9999, 0 = not known), month (1…12, 0 = not known),
day (1…31, 0 = not known), hours, minutes, seconds (GATT Specification Supplement §3.70).
The raw fields are kept so that "not known" parts and out-of-range device clocks survive a
round trip; :meth:`DateTime.to_datetime` gives a naive ``datetime`` when the value is complete.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from typing import Self

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import MessageCodec
from bridge.protocols.wire import Reader, Writer

_LAYOUT = struct.Struct("<HBBBBB")


@dataclass(frozen=True, slots=True)
class DateTime:
    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    SIZE = 7

    @classmethod
    def read(cls, r: Reader) -> Self:
        start = r.offset
        value = cls(*r.unpack(_LAYOUT, "Date Time"))
        problem = value.problem()
        if problem:
            raise ValueOutOfRange(f"Date Time {problem}", r.data, start)
        return value

    def write(self, w: Writer) -> None:
        problem = self.problem()
        if problem:
            raise ValueOutOfRange(f"Date Time {problem}")
        (w.u16(self.year, "year").u8(self.month, "month").u8(self.day, "day")
         .u8(self.hours, "hours").u8(self.minutes, "minutes").u8(self.seconds, "seconds"))

    def problem(self) -> str | None:
        """Why this value breaks §3.70's ranges, or ``None``. Unknown (0) parts are allowed."""
        if self.year != 0 and not 1582 <= self.year <= 9999:
            return f"year {self.year} outside 1582…9999"
        if self.month > 12:
            return f"month {self.month} outside 0…12"
        if self.day > 31:
            return f"day {self.day} outside 0…31"
        if self.hours > 23 or self.minutes > 59 or self.seconds > 59:
            return f"time {self.hours}:{self.minutes}:{self.seconds} out of range"
        return None

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        value = cls.read(r)
        r.expect_end("Date Time")
        return value

    def __bytes__(self) -> bytes:
        w = Writer()
        self.write(w)
        return bytes(w)

    @classmethod
    def from_datetime(cls, value: dt.datetime) -> Self:
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second)

    @property
    def is_complete(self) -> bool:
        return self.year != 0 and self.month != 0 and self.day != 0

    def to_datetime(self) -> dt.datetime:
        """The naive wall-clock time; ``ValueOutOfRange`` if a part is unknown or invalid."""
        if not self.is_complete:
            raise ValueOutOfRange(f"Date Time {self} has unknown parts")
        try:
            return dt.datetime(self.year, self.month, self.day, self.hours, self.minutes,
                               self.seconds)
        except ValueError as exc:
            raise ValueOutOfRange(f"Date Time {self} is not a calendar date: {exc}") from None

    def to_json(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return (f"{self.year:04d}-{self.month:02d}-{self.day:02d}"
                f"T{self.hours:02d}:{self.minutes:02d}:{self.seconds:02d}")


CODECS = (MessageCodec("date-time", "GATT Date Time (0x2A08), 7 bytes", DateTime.from_bytes),)
