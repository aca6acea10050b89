"""The one exception root of the ``bridge`` package and its protocol errors.

Every error carries the data it is about, so a caller (or a hardware team reading a log)
can see exactly which bytes were refused and where.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ProtocolError(BridgeError):
    """A frame or payload that does not follow its protocol specification.

    ``data`` is the whole frame that was being decoded (or encoded), ``offset`` the byte position
    at which decoding gave up (``None`` when the problem is not tied to one position).
    """

    def __init__(self, message: str, data: bytes = b"", offset: int | None = None) -> None:
        self.reason = message
        self.data = bytes(data)
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        shown = self.data[:64].hex(" ")
        more = " …" if len(self.data) > 64 else ""
        suffix = f" in {len(self.data)}-byte frame [{shown}{more}]" if self.data else ""
        super().__init__(f"{message}{where}{suffix}")


class TruncatedFrame(ProtocolError):
    """The frame ended before a field the flags or length announced."""


class TrailingBytes(ProtocolError):
    """The frame carries bytes after its last announced field."""


class CrcMismatch(ProtocolError):
    """A frame's CRC or checksum does not match its content."""

    def __init__(
        self, message: str, data: bytes = b"", offset: int | None = None, *,
        expected: int, received: int,
    ) -> None:
        self.expected = expected
        self.received = received
        super().__init__(f"{message} (computed 0x{expected:04X}, received 0x{received:04X})",
                         data, offset)


class ValueOutOfRange(ProtocolError):
    """A field holds a value its specification does not allow (or that cannot be encoded)."""


class UnknownOpCode(ProtocolError):
    """An op code, APDU choice or message type that the specification does not define."""


class MalformedFrame(ProtocolError):
    """Framing is broken: missing start/end markers, a length that lies, bad characters."""
