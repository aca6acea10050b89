"""Little helpers for reading and writing fixed-layout frames.

Every decoder reads through :class:`Reader`, so running out of bytes always becomes a
:class:`~bridge.errors.TruncatedFrame` that names the field and offset, never an
``IndexError`` or ``struct.error``. Bluetooth GATT payloads are little-endian (Core Spec
Vol 3 Part G); IEEE 11073-20601 MDER is big-endian, so the byte order is a reader setting.
"""

from __future__ import annotations

import struct
from typing import Any, Literal

from bridge.errors import TrailingBytes, TruncatedFrame, ValueOutOfRange

ByteOrder = Literal["little", "big"]


class Reader:
    """A cursor over one frame. ``offset`` always points at the next unread byte."""

    __slots__ = ("byteorder", "data", "end", "offset")

    def __init__(self, data: bytes, byteorder: ByteOrder = "little", *,
                 offset: int = 0, end: int | None = None) -> None:
        self.data = bytes(data)
        self.byteorder: ByteOrder = byteorder
        self.offset = offset
        self.end = len(self.data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.offset

    def take(self, n: int, what: str = "field") -> bytes:
        if n < 0 or self.offset + n > self.end:
            raise TruncatedFrame(
                f"{what} needs {n} byte(s) but only {max(self.remaining, 0)} remain",
                self.data, self.offset)
        chunk = self.data[self.offset:self.offset + n]
        self.offset += n
        return chunk

    def uint(self, n: int, what: str = "field") -> int:
        return int.from_bytes(self.take(n, what), self.byteorder)

    def unpack(self, layout: struct.Struct, what: str = "fields") -> tuple[Any, ...]:
        """Several fixed-size fields at once (``layout`` carries its own byte order)."""
        if self.offset + layout.size > self.end:
            raise TruncatedFrame(
                f"{what} need {layout.size} byte(s) but only {max(self.remaining, 0)} remain",
                self.data, self.offset)
        values = layout.unpack_from(self.data, self.offset)
        self.offset += layout.size
        return values

    def sint(self, n: int, what: str = "field") -> int:
        return int.from_bytes(self.take(n, what), self.byteorder, signed=True)

    def u8(self, what: str = "uint8") -> int:
        if self.offset >= self.end:
            raise TruncatedFrame(f"{what} needs 1 byte but none remain", self.data, self.offset)
        value = self.data[self.offset]
        self.offset += 1
        return value

    def u16(self, what: str = "uint16") -> int:
        return self.uint(2, what)

    def s16(self, what: str = "sint16") -> int:
        return self.sint(2, what)

    def u24(self, what: str = "uint24") -> int:
        return self.uint(3, what)

    def u32(self, what: str = "uint32") -> int:
        return self.uint(4, what)

    def s8(self, what: str = "sint8") -> int:
        return self.sint(1, what)

    def rest(self) -> bytes:
        return self.take(self.remaining, "rest")

    def sub(self, n: int, what: str = "field") -> Reader:
        """A reader over the next ``n`` bytes (offsets stay relative to the whole frame)."""
        start = self.offset
        self.take(n, what)
        return Reader(self.data, self.byteorder, offset=start, end=start + n)

    def expect_end(self, what: str = "frame") -> None:
        if self.offset != self.end:
            raise TrailingBytes(f"{self.end - self.offset} unexpected byte(s) after the {what}",
                                self.data, self.offset)


class Writer:
    """Builds a frame field by field; refuses values that do not fit their field."""

    __slots__ = ("byteorder", "parts")

    def __init__(self, byteorder: ByteOrder = "little") -> None:
        self.byteorder: ByteOrder = byteorder
        self.parts = bytearray()

    def raw(self, data: bytes) -> Writer:
        self.parts += data
        return self

    def uint(self, value: int, n: int, what: str = "field") -> Writer:
        if not 0 <= value < 1 << (8 * n):
            raise ValueOutOfRange(f"{what}={value} does not fit an unsigned {8 * n}-bit field")
        self.parts += value.to_bytes(n, self.byteorder)
        return self

    def sint(self, value: int, n: int, what: str = "field") -> Writer:
        half = 1 << (8 * n - 1)
        if not -half <= value < half:
            raise ValueOutOfRange(f"{what}={value} does not fit a signed {8 * n}-bit field")
        self.parts += value.to_bytes(n, self.byteorder, signed=True)
        return self

    def u8(self, value: int, what: str = "uint8") -> Writer:
        return self.uint(value, 1, what)

    def u16(self, value: int, what: str = "uint16") -> Writer:
        return self.uint(value, 2, what)

    def s16(self, value: int, what: str = "sint16") -> Writer:
        return self.sint(value, 2, what)

    def u24(self, value: int, what: str = "uint24") -> Writer:
        return self.uint(value, 3, what)

    def u32(self, value: int, what: str = "uint32") -> Writer:
        return self.uint(value, 4, what)

    def s8(self, value: int, what: str = "sint8") -> Writer:
        return self.sint(value, 1, what)

    def __bytes__(self) -> bytes:
        return bytes(self.parts)
