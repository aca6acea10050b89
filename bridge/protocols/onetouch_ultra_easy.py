"""LifeScan OneTouch Ultra Easy / Ultra Mini: binary serial frames with link control.

Framing (LifeScan "shared binary protocol", as used by the Ultra Easy/Mini at 9600 8N1)::

    STX(0x02) LEN LINK MESSAGE… ETX(0x03) CRC16-LE

* ``LEN`` is the length of the whole frame, STX through the CRC, so ``len(MESSAGE) + 6``.
* ``LINK`` is the link-control byte (bit4 more, bit3 disconnect, bit2 acknowledge,
  bit1 expect-receive ``E``, bit0 sequence ``S``); bits 5–7 are kept as given.
* ``CRC`` is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over STX … ETX inclusive, sent
  little-endian. LifeScan's published example ``02 12 00 05 0B 02 00 00 00 00 84 6A E8 73 00 03``
  carries ``9B EA``, which this CRC reproduces.

Exchange: host request → meter ACK frame → meter response → host ACK frame. Every data frame
carries the sender's one-bit sequence number ``S`` and the sequence number it expects next from
the peer (``E``); :class:`LinkSequence` keeps that bookkeeping for one end of the link.

Messages start with the command prefix 0x05. Requests are ``05 <command> …``; responses echo
the prefix and then carry a status byte (0x06 = success) before the data. Responses cannot be
told apart without knowing the request (an RTC value and a unit answer are both four bytes),
so there is one generic response codec (``ultraeasy-response``) and one typed codec per
answer kind; :func:`parse_response` picks the typed class from the request.

Timestamps are u32 little-endian seconds since 1970-01-01 00:00:00 of the meter's own clock
(device-local wall time, no time zone); they are exposed as naive ``datetime`` values.

UNCONFIRMED (taken from open-source drivers, not from LifeScan's text): the glucose-unit
request ``05 09 02 09 00 00 00 00`` and its answer ``05 06 <unit> 00 00 00``; the record-count
answer ``05 0F <u16 count>`` (drivers disagree on whether the 0x05 prefix is present — this
module expects it); the length byte in front of the version string; the 1970 epoch; the meaning
of the nine parameter bytes of the serial-number request; and the meter's answer to a
disconnect frame (assumed to be an ACK frame with the disconnect bit set).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, NamedTuple, Self

from bridge.errors import (
    CrcMismatch,
    MalformedFrame,
    ProtocolError,
    UnknownOpCode,
    ValueOutOfRange,
)
from bridge.protocols.codec import MessageCodec
from bridge.protocols.crc import crc16_ccitt_false
from bridge.protocols.wire import Reader, Writer

STX = 0x02
ETX = 0x03
#: STX, LEN, LINK, ETX and the two CRC bytes.
FRAME_OVERHEAD = 6
MAX_MESSAGE = 0xFF - FRAME_OVERHEAD
COMMAND_PREFIX = 0x05
STATUS_SUCCESS = 0x06
#: The record id that answers with the number of stored records instead of a record.
RECORD_COUNT_ID = 501
#: Epoch of the meter clock (device-local wall time). UNCONFIRMED, see module docstring.
EPOCH = dt.datetime(1970, 1, 1)
_MAX_TIMESTAMP = 0xFFFFFFFF


class LinkControl(IntFlag):
    """The link-control byte (LifeScan Ultra Easy/Mini protocol, link layer)."""

    SEQUENCE = 0x01
    EXPECT_RECEIVE = 0x02
    ACKNOWLEDGE = 0x04
    DISCONNECT = 0x08
    MORE = 0x10


class UltraEasyCommand(IntEnum):
    """Second message byte of a request (after the 0x05 prefix)."""

    READ_PARAMETER = 0x09  # used for the glucose unit; UNCONFIRMED
    READ_SERIAL_NUMBER = 0x0B
    READ_SOFTWARE_VERSION = 0x0D
    ERASE_MEMORY = 0x1A
    READ_RECORD = 0x1F
    REAL_TIME_CLOCK = 0x20


class RtcOperation(IntEnum):
    """Third byte of a ``05 20`` real-time-clock request."""

    WRITE = 0x01
    READ = 0x02


class UltraEasyUnit(IntEnum):
    """Display unit answered by the glucose-unit request. Records are always mg/dL."""

    MG_DL = 0x00
    MMOL_L = 0x01


# --- conversions ------------------------------------------------------------------------------

def _device_time(seconds: int) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=seconds)


def _seconds(value: dt.datetime, what: str) -> int:
    if value.tzinfo is not None:
        raise ValueOutOfRange(f"{what} must be a naive device-local datetime")
    delta = value - EPOCH
    if delta.microseconds or not 0 <= delta.days * 86400 + delta.seconds <= _MAX_TIMESTAMP:
        raise ValueOutOfRange(f"{what} {value.isoformat()} is not a whole second in 1970…2106")
    return delta.days * 86400 + delta.seconds


def _ascii(raw: bytes, data: bytes, offset: int, what: str) -> str:
    if any(not 0x20 <= b <= 0x7E for b in raw):
        raise MalformedFrame(f"{what} is not printable ASCII", data, offset)
    return raw.decode("ascii")


def _ascii_bytes(text: str, what: str) -> bytes:
    if any(not 0x20 <= ord(c) <= 0x7E for c in text):
        raise ValueOutOfRange(f"{what} {text!r} is not printable ASCII")
    return text.encode("ascii")


def _expect(r: Reader, value: int, what: str) -> None:
    start = r.offset
    got = r.u8(what)
    if got != value:
        raise MalformedFrame(f"{what} is 0x{got:02X}, expected 0x{value:02X}", r.data, start)


# --- frame ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UltraEasyFrame:
    """One link-layer frame; ``message`` is empty for pure ACK / disconnect frames."""

    link: LinkControl
    message: bytes = b""

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        r = Reader(data)
        _expect(r, STX, "STX")
        length = r.u8("LEN")
        if length < FRAME_OVERHEAD:
            raise MalformedFrame(f"LEN {length} is shorter than the {FRAME_OVERHEAD}-byte framing",
                                 data, 1)
        if length != len(data):
            raise MalformedFrame(f"LEN says {length} bytes but the frame has {len(data)}", data, 1)
        link = LinkControl(r.u8("link control"))
        message = r.take(length - FRAME_OVERHEAD, "message")
        _expect(r, ETX, "ETX")
        computed = crc16_ccitt_false(data[:r.offset])
        crc_offset = r.offset
        received = r.u16("CRC")
        r.expect_end("Ultra Easy frame")
        if computed != received:
            raise CrcMismatch("Ultra Easy frame CRC-16/CCITT-FALSE mismatch", data, crc_offset,
                              expected=computed, received=received)
        return cls(link, message)

    def __bytes__(self) -> bytes:
        if len(self.message) > MAX_MESSAGE:
            raise ValueOutOfRange(f"message of {len(self.message)} bytes exceeds {MAX_MESSAGE}")
        w = Writer()
        w.u8(STX).u8(len(self.message) + FRAME_OVERHEAD).u8(int(self.link), "link control")
        w.raw(self.message).u8(ETX)
        body = bytes(w)
        return body + crc16_ccitt_false(body).to_bytes(2, "little")

    @property
    def sequence(self) -> bool:
        return bool(self.link & LinkControl.SEQUENCE)

    @property
    def expect_receive(self) -> bool:
        return bool(self.link & LinkControl.EXPECT_RECEIVE)

    @property
    def is_ack(self) -> bool:
        return bool(self.link & LinkControl.ACKNOWLEDGE)

    @property
    def is_disconnect(self) -> bool:
        return bool(self.link & LinkControl.DISCONNECT)


def _link(sequence: bool, expect: bool) -> LinkControl:
    link = LinkControl(0)
    if sequence:
        link |= LinkControl.SEQUENCE
    if expect:
        link |= LinkControl.EXPECT_RECEIVE
    return link


@dataclass(slots=True)
class LinkSequence:
    """Sequence-bit bookkeeping of one end of the link (host or meter).

    ``sent`` is the S bit of our next data frame, ``expected`` the S bit we expect on the
    peer's next data frame (our E bit). Data frames toggle ``sent``; an accepted new data
    frame from the peer toggles ``expected``; ACK frames toggle nothing.
    """

    sent: bool = False
    expected: bool = False

    def data(self, message: bytes) -> UltraEasyFrame:
        frame = UltraEasyFrame(_link(self.sent, self.expected), bytes(message))
        self.sent = not self.sent
        return frame

    def ack(self, *, disconnect: bool = False) -> UltraEasyFrame:
        """An ACK frame; ``disconnect`` answers a received disconnect (link byte UNCONFIRMED)."""
        link = _link(self.sent, self.expected) | LinkControl.ACKNOWLEDGE
        if disconnect:
            link |= LinkControl.DISCONNECT
        return UltraEasyFrame(link)

    def disconnect(self) -> UltraEasyFrame:
        """A disconnect frame; it also restarts both sequence bits for the next link."""
        frame = UltraEasyFrame(_link(self.sent, self.expected) | LinkControl.DISCONNECT)
        self.sent = self.expected = False
        return frame

    def receive(self, frame: UltraEasyFrame) -> bool:
        """Account for a received frame; True when it is a new data frame to acknowledge.

        A data frame repeating the previous sequence bit is a retransmission (our ACK was
        lost): it must be acknowledged again but not processed, so this returns False and the
        caller re-sends :meth:`ack`. A disconnect restarts the sequence bits.
        """
        if frame.is_disconnect:
            self.sent = self.expected = False
            return False
        if frame.is_ack:
            return False
        if frame.sequence != self.expected:
            return False
        self.expected = not self.expected
        return True


class FrameSplit(NamedTuple):
    """Result of :func:`split_frames`: complete valid frames, unconsumed tail, dropped bytes."""

    frames: list[UltraEasyFrame]
    rest: bytes
    skipped: bytes


def split_frames(buffer: bytes) -> FrameSplit:
    """Find the complete, valid frames in a received byte stream.

    Bytes that cannot start a valid frame (noise, or a frame whose ETX/CRC is wrong) are
    dropped one at a time and returned in ``skipped`` so the stream resynchronises on the next
    STX; nothing is raised. ``rest`` is an incomplete frame to be completed by later bytes
    (at most 254 bytes; a false STX with a large LEN delays resync by at most that much).
    """
    buf = bytes(buffer)
    frames: list[UltraEasyFrame] = []
    skipped = bytearray()
    i, n = 0, len(buf)
    while i < n:
        if buf[i] != STX:
            skipped.append(buf[i])
            i += 1
            continue
        if i + 1 >= n:
            break
        length = buf[i + 1]
        if length < FRAME_OVERHEAD:
            skipped.append(buf[i])
            i += 1
            continue
        if i + length > n:
            break
        try:
            frames.append(UltraEasyFrame.from_bytes(buf[i:i + length]))
        except ProtocolError:
            skipped.append(buf[i])
            i += 1
            continue
        i += length
    return FrameSplit(frames, buf[i:], bytes(skipped))


# --- requests ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReadSoftwareVersionRequest:
    """``05 0D 02``."""

    WRITES_TO_METER: ClassVar[bool] = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _request_reader(data, UltraEasyCommand.READ_SOFTWARE_VERSION)
        _expect(r, 0x02, "read selector")
        r.expect_end("version request")
        return cls()

    def __bytes__(self) -> bytes:
        return bytes([COMMAND_PREFIX, UltraEasyCommand.READ_SOFTWARE_VERSION, 0x02])


#: Parameter bytes of LifeScan's published serial-number request (meaning UNCONFIRMED).
SERIAL_REQUEST_PARAMETERS = bytes.fromhex("00 00 00 00 84 6A E8 73 00")


@dataclass(frozen=True, slots=True)
class ReadSerialNumberRequest:
    """``05 0B 02`` + nine parameter bytes, kept as sent."""

    parameters: bytes = SERIAL_REQUEST_PARAMETERS

    WRITES_TO_METER: ClassVar[bool] = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _request_reader(data, UltraEasyCommand.READ_SERIAL_NUMBER)
        _expect(r, 0x02, "read selector")
        parameters = r.take(9, "serial-number request parameters")
        r.expect_end("serial-number request")
        return cls(parameters)

    def __bytes__(self) -> bytes:
        if len(self.parameters) != 9:
            raise ValueOutOfRange("serial-number request takes exactly 9 parameter bytes")
        return bytes([COMMAND_PREFIX, UltraEasyCommand.READ_SERIAL_NUMBER, 0x02]) + self.parameters


@dataclass(frozen=True, slots=True)
class ReadClockRequest:
    """``05 20 02 <u32>``; the u32 is zero in every known request but kept as sent."""

    reserved: int = 0

    WRITES_TO_METER: ClassVar[bool] = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _request_reader(data, UltraEasyCommand.REAL_TIME_CLOCK)
        _expect(r, RtcOperation.READ, "RTC operation")
        reserved = r.u32("reserved")
        r.expect_end("RTC read request")
        return cls(reserved)

    def __bytes__(self) -> bytes:
        return _encode_rtc(RtcOperation.READ, self.reserved)


@dataclass(frozen=True, slots=True)
class WriteClockRequest:
    """``05 20 01 <u32 seconds>`` — sets the meter clock: WRITES TO THE METER."""

    device_time: dt.datetime

    WRITES_TO_METER: ClassVar[bool] = True

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _request_reader(data, UltraEasyCommand.REAL_TIME_CLOCK)
        _expect(r, RtcOperation.WRITE, "RTC operation")
        seconds = r.u32("clock seconds")
        r.expect_end("RTC write request")
        return cls(_device_time(seconds))

    def __bytes__(self) -> bytes:
        return _encode_rtc(RtcOperation.WRITE, _seconds(self.device_time, "clock"))


def _encode_rtc(op: RtcOperation, value: int) -> bytes:
    w = Writer().u8(COMMAND_PREFIX).u8(UltraEasyCommand.REAL_TIME_CLOCK).u8(op)
    return bytes(w.u32(value, "clock"))


#: Parameter bytes of the glucose-unit request (UNCONFIRMED, see module docstring).
UNIT_REQUEST_PARAMETERS = bytes.fromhex("09 00 00 00 00")


@dataclass(frozen=True, slots=True)
class ReadGlucoseUnitRequest:
    """``05 09 02`` + five parameter bytes (``09 00 00 00 00`` selects the display unit)."""

    parameters: bytes = UNIT_REQUEST_PARAMETERS

    WRITES_TO_METER: ClassVar[bool] = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _request_reader(data, UltraEasyCommand.READ_PARAMETER)
        _expect(r, 0x02, "read selector")
        parameters = r.take(5, "parameter selector")
        r.expect_end("glucose-unit request")
        return cls(parameters)

    def __bytes__(self) -> bytes:
        if len(self.parameters) != 5:
            raise ValueOutOfRange("glucose-unit request takes exactly 5 parameter bytes")
        return bytes([COMMAND_PREFIX, UltraEasyCommand.READ_PARAMETER, 0x02]) + self.parameters


@dataclass(frozen=True, slots=True)
class ReadRecordCountRequest:
    """``05 1F F5 01``: reading record id 501 answers with the number of stored records."""

    WRITES_TO_METER: ClassVar[bool] = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        request = _decode_record_request(data)
        if not isinstance(request, cls):
            raise MalformedFrame("not a record-count request", data, 2)
        return request

    def __bytes__(self) -> bytes:
        return bytes(Writer().u8(COMMAND_PREFIX).u8(UltraEasyCommand.READ_RECORD)
                     .u16(RECORD_COUNT_ID))


@dataclass(frozen=True, slots=True)
class ReadRecordRequest:
    """``05 1F <u16 record id>``; id 0 is the newest record."""

    record_id: int

    WRITES_TO_METER: ClassVar[bool] = False

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        request = _decode_record_request(data)
        if not isinstance(request, cls):
            raise MalformedFrame("record id 501 is the record-count request", data, 2)
        return request

    def __bytes__(self) -> bytes:
        if self.record_id == RECORD_COUNT_ID:
            raise ValueOutOfRange("record id 501 is reserved for the record-count request")
        return bytes(Writer().u8(COMMAND_PREFIX).u8(UltraEasyCommand.READ_RECORD)
                     .u16(self.record_id, "record id"))


def _decode_record_request(data: bytes) -> ReadRecordRequest | ReadRecordCountRequest:
    r = _request_reader(data, UltraEasyCommand.READ_RECORD)
    record_id = r.u16("record id")
    r.expect_end("record request")
    if record_id == RECORD_COUNT_ID:
        return ReadRecordCountRequest()
    return ReadRecordRequest(record_id)


@dataclass(frozen=True, slots=True)
class EraseMemoryRequest:
    """``05 1A`` — deletes every stored reading: WRITES TO THE METER."""

    WRITES_TO_METER: ClassVar[bool] = True

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _request_reader(data, UltraEasyCommand.ERASE_MEMORY)
        r.expect_end("erase request")
        return cls()

    def __bytes__(self) -> bytes:
        return bytes([COMMAND_PREFIX, UltraEasyCommand.ERASE_MEMORY])


UltraEasyRequest = (ReadSoftwareVersionRequest | ReadSerialNumberRequest | ReadClockRequest
                    | WriteClockRequest | ReadGlucoseUnitRequest | ReadRecordCountRequest
                    | ReadRecordRequest | EraseMemoryRequest)


def _request_reader(data: bytes, command: UltraEasyCommand) -> Reader:
    r = Reader(data)
    _prefix(r)
    start = r.offset
    got = r.u8("command")
    if got != command:
        raise MalformedFrame(f"command 0x{got:02X} is not {command.name}", r.data, start)
    return r


def _prefix(r: Reader) -> None:
    start = r.offset
    prefix = r.u8("command prefix")
    if prefix != COMMAND_PREFIX:
        raise UnknownOpCode(f"command prefix 0x{prefix:02X} is not 0x05", r.data, start)


def decode_request(message: bytes) -> UltraEasyRequest:
    """The request carried in a frame's message bytes."""
    message = bytes(message)
    r = Reader(message)
    _prefix(r)
    command = r.u8("command")
    if command == UltraEasyCommand.READ_SOFTWARE_VERSION:
        return ReadSoftwareVersionRequest.from_bytes(message)
    if command == UltraEasyCommand.READ_SERIAL_NUMBER:
        return ReadSerialNumberRequest.from_bytes(message)
    if command == UltraEasyCommand.READ_PARAMETER:
        return ReadGlucoseUnitRequest.from_bytes(message)
    if command == UltraEasyCommand.READ_RECORD:
        return _decode_record_request(message)
    if command == UltraEasyCommand.ERASE_MEMORY:
        return EraseMemoryRequest.from_bytes(message)
    if command == UltraEasyCommand.REAL_TIME_CLOCK:
        op = r.u8("RTC operation")
        if op == RtcOperation.READ:
            return ReadClockRequest.from_bytes(message)
        if op == RtcOperation.WRITE:
            return WriteClockRequest.from_bytes(message)
        raise UnknownOpCode(f"RTC operation 0x{op:02X} is not read (02) or write (01)",
                            message, 2)
    raise UnknownOpCode(f"unknown Ultra Easy command 0x{command:02X}", message, 1)


# --- responses -----------------------------------------------------------------------------

def _response_reader(data: bytes, status: int = STATUS_SUCCESS) -> Reader:
    r = Reader(data)
    _prefix(r)
    start = r.offset
    got = r.u8("status")
    if got != status:
        raise MalformedFrame(f"status 0x{got:02X}, expected 0x{status:02X}", r.data, start)
    return r


@dataclass(frozen=True, slots=True)
class UltraEasyResponse:
    """Any response message, undecoded: ``05 <status> <data…>`` (status 0x06 = success)."""

    status: int
    data: bytes = b""

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = Reader(data)
        _prefix(r)
        status = r.u8("status")
        return cls(status, r.rest())

    def __bytes__(self) -> bytes:
        return bytes(Writer().u8(COMMAND_PREFIX).u8(self.status, "status").raw(self.data))

    @property
    def success(self) -> bool:
        return self.status == STATUS_SUCCESS


@dataclass(frozen=True, slots=True)
class SuccessResponse:
    """``05 06`` with no data: the answer to an erase request."""

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data)
        r.expect_end("success response")
        return cls()

    def __bytes__(self) -> bytes:
        return bytes([COMMAND_PREFIX, STATUS_SUCCESS])


@dataclass(frozen=True, slots=True)
class SoftwareVersionResponse:
    """``05 06 <n> <n ASCII characters>``."""

    version: str

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data)
        n = r.u8("version length")
        start = r.offset
        version = _ascii(r.take(n, "version text"), r.data, start, "software version")
        r.expect_end("version response")
        return cls(version)

    def __bytes__(self) -> bytes:
        raw = _ascii_bytes(self.version, "software version")
        w = Writer().u8(COMMAND_PREFIX).u8(STATUS_SUCCESS).u8(len(raw), "version length")
        return bytes(w.raw(raw))


@dataclass(frozen=True, slots=True)
class SerialNumberResponse:
    """``05 06 <ASCII serial number to the end of the message>``."""

    serial_number: str

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data)
        start = r.offset
        return cls(_ascii(r.rest(), r.data, start, "serial number"))

    def __bytes__(self) -> bytes:
        return bytes([COMMAND_PREFIX, STATUS_SUCCESS]) + _ascii_bytes(self.serial_number,
                                                                      "serial number")


@dataclass(frozen=True, slots=True)
class ClockResponse:
    """``05 06 <u32 seconds>``: the meter clock, answer to an RTC read or write."""

    device_time: dt.datetime

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data)
        seconds = r.u32("clock seconds")
        r.expect_end("clock response")
        return cls(_device_time(seconds))

    def __bytes__(self) -> bytes:
        w = Writer().u8(COMMAND_PREFIX).u8(STATUS_SUCCESS)
        return bytes(w.u32(_seconds(self.device_time, "clock")))


@dataclass(frozen=True, slots=True)
class GlucoseUnitResponse:
    """``05 06 <unit u8> <3 bytes>``; unknown unit codes are kept as plain ints."""

    unit: UltraEasyUnit | int
    reserved: bytes = b"\x00\x00\x00"

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data)
        raw = r.u8("unit")
        reserved = r.take(3, "reserved")
        r.expect_end("glucose-unit response")
        unit: UltraEasyUnit | int = (UltraEasyUnit(raw) if raw in UltraEasyUnit._value2member_map_
                                     else raw)
        return cls(unit, reserved)

    def __bytes__(self) -> bytes:
        if len(self.reserved) != 3:
            raise ValueOutOfRange("glucose-unit response carries exactly 3 reserved bytes")
        w = Writer().u8(COMMAND_PREFIX).u8(STATUS_SUCCESS).u8(int(self.unit), "unit")
        return bytes(w.raw(self.reserved))


@dataclass(frozen=True, slots=True)
class RecordResponse:
    """``05 06 <u32 seconds> <u32 value>``: one stored reading, always in mg/dL."""

    device_time: dt.datetime
    glucose_mg_dl: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data)
        seconds = r.u32("record time")
        value = r.u32("glucose value")
        r.expect_end("record response")
        return cls(_device_time(seconds), value)

    def __bytes__(self) -> bytes:
        w = Writer().u8(COMMAND_PREFIX).u8(STATUS_SUCCESS)
        w.u32(_seconds(self.device_time, "record time")).u32(self.glucose_mg_dl, "glucose value")
        return bytes(w)


#: Status byte of the record-count answer (UNCONFIRMED, see module docstring).
RECORD_COUNT_STATUS = 0x0F


@dataclass(frozen=True, slots=True)
class RecordCountResponse:
    """``05 0F <u16 count>``: answer to reading record id 501."""

    count: int

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        r = _response_reader(data, RECORD_COUNT_STATUS)
        count = r.u16("record count")
        r.expect_end("record-count response")
        return cls(count)

    def __bytes__(self) -> bytes:
        w = Writer().u8(COMMAND_PREFIX).u8(RECORD_COUNT_STATUS)
        return bytes(w.u16(self.count, "record count"))


UltraEasyResponseMessage = (UltraEasyResponse | SuccessResponse | SoftwareVersionResponse
                            | SerialNumberResponse | ClockResponse | GlucoseUnitResponse
                            | RecordResponse | RecordCountResponse)

#: Which typed response answers which request.
RESPONSE_FOR: dict[type, type[UltraEasyResponseMessage]] = {
    ReadSoftwareVersionRequest: SoftwareVersionResponse,
    ReadSerialNumberRequest: SerialNumberResponse,
    ReadClockRequest: ClockResponse,
    WriteClockRequest: ClockResponse,
    ReadGlucoseUnitRequest: GlucoseUnitResponse,
    ReadRecordCountRequest: RecordCountResponse,
    ReadRecordRequest: RecordResponse,
    EraseMemoryRequest: SuccessResponse,
}


def parse_response(message: bytes, request: UltraEasyRequest) -> UltraEasyResponseMessage:
    """The typed answer to ``request``. A non-success status raises MalformedFrame."""
    cls = RESPONSE_FOR[type(request)]
    value: UltraEasyResponseMessage = cls.from_bytes(bytes(message))
    return value


# --- frames carrying decoded messages -------------------------------------------------------

def _rebased(exc: ProtocolError, data: bytes) -> ProtocolError:
    """A message decoder's error, re-aimed at the whole frame (the message starts at byte 3)."""
    offset = None if exc.offset is None else exc.offset + 3
    return type(exc)(exc.reason, data, offset)


@dataclass(frozen=True, slots=True)
class UltraEasyRequestFrame:
    """A whole frame (STX … CRC) whose message is a request."""

    link: LinkControl
    request: UltraEasyRequest

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        data = bytes(data)
        frame = UltraEasyFrame.from_bytes(data)
        try:
            request = decode_request(frame.message)
        except ProtocolError as exc:
            raise _rebased(exc, data) from exc
        return cls(frame.link, request)

    def __bytes__(self) -> bytes:
        return bytes(UltraEasyFrame(self.link, bytes(self.request)))

    @property
    def writes_to_meter(self) -> bool:
        return self.request.WRITES_TO_METER


@dataclass(frozen=True, slots=True)
class UltraEasyResponseFrame:
    """A whole frame (STX … CRC) whose message is a response of one kind."""

    link: LinkControl
    response: UltraEasyResponseMessage

    @classmethod
    def from_bytes(cls, data: bytes,
                   response_type: type[UltraEasyResponseMessage] = UltraEasyResponse) -> Self:
        data = bytes(data)
        frame = UltraEasyFrame.from_bytes(data)
        try:
            response = response_type.from_bytes(frame.message)
        except ProtocolError as exc:
            raise _rebased(exc, data) from exc
        return cls(frame.link, response)

    def __bytes__(self) -> bytes:
        return bytes(UltraEasyFrame(self.link, bytes(self.response)))


def _response_decoder(
        response_type: type[UltraEasyResponseMessage]) -> Callable[[bytes], UltraEasyResponseFrame]:
    def decode(data: bytes) -> UltraEasyResponseFrame:
        return UltraEasyResponseFrame.from_bytes(data, response_type)
    return decode


CODECS = (
    MessageCodec("ultraeasy-frame", "OneTouch Ultra Easy/Mini link frame (STX LEN LINK … CRC)",
                 UltraEasyFrame.from_bytes),
    MessageCodec("ultraeasy-request", "OneTouch Ultra Easy/Mini frame carrying a host request",
                 UltraEasyRequestFrame.from_bytes),
    MessageCodec("ultraeasy-response", "OneTouch Ultra Easy/Mini frame carrying any response",
                 _response_decoder(UltraEasyResponse)),
    MessageCodec("ultraeasy-version-response", "Ultra Easy/Mini software-version answer frame",
                 _response_decoder(SoftwareVersionResponse)),
    MessageCodec("ultraeasy-serial-response", "Ultra Easy/Mini serial-number answer frame",
                 _response_decoder(SerialNumberResponse)),
    MessageCodec("ultraeasy-clock-response", "Ultra Easy/Mini real-time-clock answer frame",
                 _response_decoder(ClockResponse)),
    MessageCodec("ultraeasy-unit-response", "Ultra Easy/Mini glucose display-unit answer frame",
                 _response_decoder(GlucoseUnitResponse)),
    MessageCodec("ultraeasy-record-count-response", "Ultra Easy/Mini record-count answer frame",
                 _response_decoder(RecordCountResponse)),
    MessageCodec("ultraeasy-record-response", "Ultra Easy/Mini stored-reading answer frame",
                 _response_decoder(RecordResponse)),
)
