"""Battery Service (0x180F, BAS 1.0): the Battery Level characteristic (0x2A19).

One octet, the remaining charge in percent, 0…100 (BAS 1.0 §3.1); 101…255 are not defined,
so they are refused instead of shown as a charge level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from bridge.errors import ValueOutOfRange
from bridge.protocols.codec import MessageCodec
from bridge.protocols.wire import Reader, Writer

BATTERY_SERVICE_UUID = 0x180F
BATTERY_LEVEL_UUID = 0x2A19


@dataclass(frozen=True, slots=True)
class BatteryLevel:
    percent: int

    def __post_init__(self) -> None:
        if not 0 <= self.percent <= 100:
            raise ValueOutOfRange(f"battery level {self.percent}% outside 0…100")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        percent = r.u8("battery level")
        if percent > 100:
            raise ValueOutOfRange(f"battery level {percent}% outside 0…100", r.data, 0)
        r.expect_end("Battery Level")
        return cls(percent)

    def __bytes__(self) -> bytes:
        return bytes(Writer().u8(self.percent, "battery level"))


CODECS = (
    MessageCodec("bas-battery-level", "Battery Level (0x2A19), u8 percent 0…100",
                 BatteryLevel.from_bytes),
)
